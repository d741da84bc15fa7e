"""What the server accepts: request bodies, their checks, and the one error shape every refusal has.

Every refusal is an `ApiError`, answered as OpenAI answers errors:
`{"error": {"message", "type", "param", "code"}}` with a 4xx status. Bodies are read with a size
cap (the declared Content-Length first, then the bytes as they come) and parsed by pydantic in
strict mode, so `"questions": "text"` or `"stream": "yes"` is an error, not a coercion.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """A request the server refuses, with the status and OpenAI-style error it is answered with."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class DecomposeRequest(BaseModel):
    """`POST /v1/decompose`: one question or a list of them; any other field is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: str | None = None
    questions: list[str] | None = None


class ContentPart(BaseModel):
    """One part of a message's content (`{"type": "text", "text": ...}`; other parts are ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # name, tool_calls, ...: accepted, unused

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`. The fields qdtool uses are checked; OpenAI's other optional fields
    (temperature, max_tokens, top_p, stop, user, tools, ...) are accepted and ignored, because clients
    such as LangChain send some of them unasked and decoding follows the server's settings."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    n: int | None = 1
    stream_options: StreamOptions | None = None

    def question(self) -> str:
        """The last user message's text: the question to decompose."""
        for message in reversed(self.messages):
            if message.role == "user":
                content = message.content
                if isinstance(content, list):
                    content = "\n".join(part.text for part in content if part.type == "text" and part.text)
                return content or ""
        raise ApiError(400, "messages has no message with role 'user': the last user message is the question to decompose",
                       param="messages")


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (nothing past that is read)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is over {limit:,} bytes (the server's --max-body-bytes)", code="body_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected while sending the body", code="client_disconnected") from None
    return b"".join(chunks)


def parse(model: type[BaseModel], body: bytes) -> Any:
    """`body` as `model`, or a 400 naming each field that is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [_problem(error) for error in errors[:5]]
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        first = errors[0].get("loc", ()) if errors else ()
        raise ApiError(400, "; ".join(problems) + more, param=".".join(map(str, first)) or None) from None


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
    if kind == "extra_forbidden":
        return f"unknown field {where!r}"
    if kind == "missing":
        return f"{where!r} is required"
    if not where:
        return f"the body must be a JSON object (got {_json_type(error.get('input'))})"
    return f"{where!r}: {error['msg'].lower()} (got {_json_type(error.get('input'))})"


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
