"""OpenAI's wire formats for a decomposition: a chat completion, its stream of chunks, the model list.

The reply is the numbered steps as training formats them (`prompts.format_answer`); an output that
did not parse is sent as the model wrote it. A stream sends the finished reply line by line as
`chat.completion.chunk` server-sent events and ends with `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from qdtool.core.generation import Decomposition
from qdtool.core.prompts import format_answer


def reply_text(result: Decomposition) -> str:
    """The assistant message: `1. ...` lines, or the raw output when it has no steps."""
    return format_answer(result.sub_questions) if result.parse_ok else result.raw


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion(reply: str, model: str, tokens: dict[str, int]) -> dict[str, Any]:
    """A `chat.completion` object with one choice."""
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": None, "finish_reason": "stop"}],
        "usage": tokens,
    }


async def chunks(reply: str, model: str, tokens: dict[str, int] | None) -> AsyncIterator[str]:
    """Server-sent events: the role, then the reply line by line, then the finish reason (and the
    usage when `tokens` is given, as `stream_options.include_usage` asks), then `[DONE]`."""
    head = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def event(delta: dict[str, str], finish: str | None = None) -> str:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield event({"role": "assistant", "content": ""})
    for line in reply.splitlines(keepends=True):
        yield event({"content": line})
    yield event({}, "stop")
    if tokens is not None:
        yield _sse({**head, "choices": [], "usage": tokens})
    yield "data: [DONE]\n\n"


def model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "qdtool"}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
