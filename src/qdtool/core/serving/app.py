"""The HTTP API (FastAPI): `/v1/decompose`, OpenAI's `/v1/chat/completions` and `/v1/models`, `/health`.

Each route checks, in this order, the API key (401), the body's size (413), its JSON and fields
(400), then the questions (400), and only then queues them. Every refusal, a wrong path or method
included, is an OpenAI-style JSON error; an unexpected failure is a JSON 500 for that request only.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from qdtool import __version__
from qdtool.core.generation import Decomposer
from qdtool.core.serving import chat
from qdtool.core.serving.batcher import RunBatch
from qdtool.core.serving.requests import ApiError, ChatRequest, DecomposeRequest, parse, read_body
from qdtool.core.serving.service import ServeSettings, Service

# Questions in the largest batch a response's questions were decoded in (1: decoded alone).
BATCH_HEADER = "X-Qdtool-Batch-Size"

router = APIRouter()


def create_app(decomposer: Decomposer, settings: ServeSettings | None = None, *, run: RunBatch | None = None) -> FastAPI:
    """The ASGI app serving `decomposer` (run it with uvicorn; the batcher starts with the app's lifespan).

    Args:
        run: decodes a batch of rows instead of `generation.decompose` (tests inject failures here).
    """
    service = Service(decomposer, settings or ServeSettings(), run)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="qdtool", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _server_error)
    app.include_router(router)
    return app


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness and the batcher's counters (no key needed: it tells nothing about the questions)."""
    service: Service = request.app.state.service
    stats = service.batcher.stats
    return {"status": "ok", "model": service.settings.model_name, "queued": service.batcher.queued, "decoding": stats.decoding,
            "batches": stats.batches, "questions": stats.questions, "largest_batch": stats.largest_batch, "failed": stats.failed}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    service = _authorized(request)
    return {"object": "list", "data": [chat.model_card(service.settings.model_name, service.started)]}


@router.get("/v1/models/{model_id:path}")
async def model(request: Request, model_id: str) -> dict[str, Any]:
    service = _authorized(request)
    if model_id != service.settings.model_name:
        raise ApiError(404, f"no model {model_id!r} here; this server has {service.settings.model_name!r}", param="model",
                       code="model_not_found")
    return chat.model_card(model_id, service.started)


@router.post("/v1/decompose")
async def decompose(request: Request) -> Response:
    """`{"question": "..."}` or `{"questions": [...]}` -> `{"results": [{"question", "sub_questions", "parse_ok"}]}`."""
    service = _authorized(request)
    body = parse(DecomposeRequest, await read_body(request, service.settings.max_body_bytes))
    if (body.question is None) == (body.questions is None):
        raise ApiError(400, 'send either "question" (a string) or "questions" (a list of strings)', param="questions")
    single = body.question is not None
    questions = [body.question] if single else body.questions
    limit = service.settings.max_questions
    if not questions or len(questions) > limit:
        raise ApiError(400, f'"questions" has {len(questions)} questions; send 1 to {limit} per request (the server\'s '
                       "--max-questions)", param="questions", code="too_many_questions" if questions else "no_questions")
    decoded = await service.decompose(request, questions, (lambda i: "question") if single else (lambda i: f"questions[{i}]"),
                                      "question" if single else "questions")
    results = [{"question": r.question, "sub_questions": r.sub_questions, "parse_ok": r.parse_ok} for r in decoded.results]
    return JSONResponse({"results": results}, headers={BATCH_HEADER: str(decoded.batch_size)})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions: the last user message is the question, the reply its numbered steps."""
    service = _authorized(request)
    body = parse(ChatRequest, await read_body(request, service.settings.max_body_bytes))
    if body.n not in (None, 1):
        raise ApiError(400, f"n is {body.n}: this server gives one decomposition per question (greedy decoding); send n=1",
                       param="n")
    decoded = await service.decompose(request, [body.question()], lambda i: "the last user message", "messages")
    reply = chat.reply_text(decoded.results[0])
    tokens = chat.usage(decoded.prompt_tokens, await service.count_text(reply))
    name, headers = service.settings.model_name, {BATCH_HEADER: str(decoded.batch_size)}
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(chat.chunks(reply, name, tokens if include_usage else None), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    return JSONResponse(chat.completion(reply, name, tokens), headers=headers)


def _authorized(request: Request) -> Service:
    """The service, once the request carries the API key (when the server has one)."""
    service: Service = request.app.state.service
    key = service.settings.api_key
    if not key:
        return service
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "this server needs an API key: send the header `Authorization: Bearer KEY` (an OpenAI client's api_key)",
                       "authentication_error", code="missing_api_key", headers=challenge)
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "wrong API key", "authentication_error", code="invalid_api_key", headers=challenge)
    return service


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's 404 and 405 in the same JSON shape as every other error."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code, headers=exc.headers)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug answers its own request with a JSON 500 (uvicorn logs the traceback); the server goes on."""
    error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal_error")
    return JSONResponse(error.body(), status_code=500)
