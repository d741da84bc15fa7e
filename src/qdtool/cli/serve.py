"""`qdtool serve`: a decomposer behind an HTTP API (core/serving builds the app; uvicorn runs it here)."""

from __future__ import annotations

import errno
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

from qdtool.cli._common import err_console, quiet_libraries, status, user_errors
from qdtool.cli.decompose import (
    Consensus,
    Device,
    MaxInputTokens,
    MaxNewTokens,
    MaxSubQuestions,
    NoRepeatNgramSize,
    RepetitionPenalty,
    StopAtRepeat,
    TrustRemoteCode,
    sampling,
)
from qdtool.errors import UsageError

EXAMPLES = """
Examples:

  qdtool serve runs/gemma-3-270m-examples

  QDTOOL_API_KEY=secret qdtool serve runs/gemma-3-270m-examples/merged --host 0.0.0.0 --port 8080

  curl -s localhost:8000/v1/decompose -d '{"question": "Was Aristotle alive when the laptop was invented?"}'

Any OpenAI client works against it: base_url http://localhost:8000/v1, api_key the server's key
(any string when it has none). The last user message is the question; the reply is its numbered
sub-questions. Questions that arrive together are decoded in one batch (--max-batch, --max-wait-ms).
SIGTERM or Ctrl-C stops taking connections, answers the requests in flight, then exits 0.
"""

Model = Annotated[str, typer.Argument(metavar="MODEL", help="Run dir, merged dir, hub id or 'embedded'.", show_default=False)]
Host = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; then set an API key).")]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one, printed at start).")]
ApiKey = Annotated[Optional[str], typer.Option(
    envvar="QDTOOL_API_KEY", show_envvar=True, show_default=False, metavar="KEY",
    help="Require `Authorization: Bearer KEY` on every /v1 request (prefer the environment variable: a flag shows in ps).")]
ModelName = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default=False, help="Model id in /v1/models and replies [default: the model directory's name, or MODEL].")]
MaxBatch = Annotated[int, typer.Option(min=1, help="Sequences decoded together at most: questions, x N with --consensus N.")]
MaxBatchTokens = Annotated[int, typer.Option(min=1, help="Padded prompt tokens per batch at most (longest prompt x sequences).")]
MaxWaitMs = Annotated[float, typer.Option(min=0.0, help="Milliseconds a batch waits for more questions after its first.")]
MaxQuestions = Annotated[int, typer.Option(min=1, help="Questions per /v1/decompose request at most.")]
MaxBodyBytes = Annotated[int, typer.Option(min=1, help="Bytes per request body at most (413 beyond).")]
MaxQueue = Annotated[int, typer.Option(min=1, help="Questions waiting at most (503 with Retry-After beyond).")]
DrainSeconds = Annotated[float, typer.Option(min=0.0, help="On SIGTERM/Ctrl-C, seconds to wait for requests in flight.")]
AccessLog = Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log one line per request.")]


def serve(
    model: Model, host: Host = "127.0.0.1", port: Port = 8000, api_key: ApiKey = None, model_name: ModelName = None,
    max_batch: MaxBatch = 16, max_batch_tokens: MaxBatchTokens = 8192, max_wait_ms: MaxWaitMs = 10.0, max_questions: MaxQuestions = 64,
    max_body_bytes: MaxBodyBytes = 1_048_576, max_queue: MaxQueue = 1024, max_new_tokens: MaxNewTokens = 256,
    max_input_tokens: MaxInputTokens = 1024, max_sub_questions: MaxSubQuestions = None, stop_at_repeat: StopAtRepeat = False,
    no_repeat_ngram_size: NoRepeatNgramSize = 0, repetition_penalty: RepetitionPenalty = 1.0, device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False, drain_seconds: DrainSeconds = 30.0, access_log: AccessLog = True,
    consensus: Consensus = 0,
) -> None:
    """Serve a decomposer over HTTP: /v1/decompose, OpenAI's /v1/chat/completions and /v1/models, /health."""
    from qdtool.core.generation import GenerationSettings, load_decomposer
    from qdtool.core.serving import ServeSettings, create_app, default_model_name

    quiet_libraries()
    with user_errors():
        sock = _bind(host, port)  # before the model loads: a port in use fails in a second, not after the load
        try:
            # batch_size: Service decodes each batch (--max-batch) in one generate() call
            temperature, samples = sampling(None, consensus)
            generation = GenerationSettings(max_new_tokens=max_new_tokens, max_input_tokens=max_input_tokens,
                                            max_sub_questions=max_sub_questions, stop_at_repeat=stop_at_repeat,
                                            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                                            temperature=temperature, num_return_sequences=samples, consensus=consensus > 0)
            settings = ServeSettings(model_name or default_model_name(model), api_key or None, max_batch, max_batch_tokens,
                                     max_wait_ms, max_questions, max_body_bytes, max_queue, generation)
            with status("loading the model") as say:
                decomposer = load_decomposer(model, device=device, trust_remote_code=trust_remote_code, progress=say)
            app = create_app(decomposer, settings)
        except BaseException:
            sock.close()
            raise
        _run(app, sock, settings, drain_seconds, access_log)


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn listens on it), or a usage error that says why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}; pass an address such as 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "pass another --port, or stop what listens there" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    return sock


def _run(app: Any, sock: socket.socket, settings: Any, drain_seconds: float, access_log: bool) -> None:
    import uvicorn

    from qdtool.errors import QdtoolError

    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=drain_seconds))
    key = "an API key is required" if settings.api_key else "no API key is required (anyone who can connect may use it)"
    err_console.print(f"serving {settings.model_name} on {url} (OpenAI base_url {url}/v1); {key}", markup=False, soft_wrap=True)
    with _stops_cleanly(server):
        server.run(sockets=[sock])
    if not server.started:
        raise QdtoolError("the server did not start; the log above says why")
    err_console.print("stopped", style="dim", markup=False)


@contextmanager
def _stops_cleanly(server: Any) -> Iterator[None]:
    """SIGINT/SIGTERM handlers that ask the server to stop, installed around uvicorn's.

    uvicorn drains on these signals, then puts back the handlers it found and raises the signal
    again for them. With the default handlers there, SIGTERM would then kill the drained process
    (exit -15); these only ask the server to stop, so the command exits 0. They also cover a signal
    that comes before uvicorn has installed its own.
    """
    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
