"""An OpenAI-compatible chat endpoint as the teacher: httpx, retries with backoff, `n` or N requests.

A 429, a 5xx, a timeout or a dropped connection is retried (`retries` times, exponential backoff
with jitter, or the server's Retry-After); a 401/403 (the key), a 404 (the URL or the model) or a
refused connection after the retries stops the whole run, since every other question would fail the
same way, and so does a 4xx that names one of synth's settings (`param`: temperature, max_tokens, ...);
any other 4xx is this question's own (too long, say): asking again gives the same answer.
The API key goes in the Authorization header only and is never part of a message, a log or a record.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from qdtool.errors import QdtoolError, UsageError

MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After is cut to this (a server asking for an hour is not waited for)


class TeacherError(QdtoolError):
    """The teacher cannot be used at all (unreachable, the key refused, no such endpoint or model): the run stops."""


class RequestFailed(Exception):
    """One question's request failed after every retry (a rerun asks it again)."""


class Refused(Exception):
    """The teacher answered this request with a 4xx of its own (not 401/403/404/429)."""

    def __init__(self, status: int, message: str, param: str | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.param = status, message, param


def api_key_from_env(name: str) -> str:
    """The API key in environment variable `name` (the key itself is never shown).

    Raises:
        UsageError: the variable is not set or empty.
    """
    import os

    value = os.environ.get(name, "").strip()
    if not value:
        raise UsageError(f"--api-key-env {name}: the environment variable {name} is not set (or empty); "
                         f"export {name}=YOUR_KEY first, or leave out --api-key-env for a server without a key")
    return value


def is_url(teacher: str) -> bool:
    return teacher.startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """`url` without user:password (which may hold a secret), for messages and provenance."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


@dataclass
class Counters:
    requests: int = 0  # HTTP requests sent (retries included)
    retries: int = 0


class OpenAITeacher:
    """Chat completions from `base_url` (e.g. https://api.openai.com/v1), thread-safe (one httpx client)."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.5, max_tokens: int = 256, temperature: float = 0.7, top_p: float = 1.0,
                 seed: int | None = None) -> None:
        import httpx

        self.url, self.model = public_url(base_url), model
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        self.seed = seed
        self.counters = Counters()
        self.n_supported: bool | None = None  # learnt from the first reply that asks for n > 1
        self.stop = threading.Event()  # set: no more retries or new requests (Ctrl-C)
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A proxy from the environment is used for remote teachers, never for one on this machine.
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout,
                                    trust_env=not _loopback(base_url))

    def close(self) -> None:
        self.stop.set()
        self._client.close()

    def check(self) -> str:
        """Reach the server once before the run (GET models) and settle the model name; returns it.

        Raises:
            TeacherError: the server cannot be reached, refuses the key, or serves several models and none was named.
        """
        import httpx

        try:
            response = self._client.get("models")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code in (401, 403):
            raise self._refused_key(response.status_code)
        ids = _model_ids(response) if response.status_code == 200 else []
        if self.model is None:
            if len(ids) != 1:
                listed = (f"it serves {', '.join(ids[:10])}" if ids else f"{self.url}/models lists no models (HTTP "
                          f"{response.status_code}; is --teacher the API's base URL? It usually ends in /v1)")
                raise TeacherError(f"pass --teacher-model NAME: {listed}")
            self.model = ids[0]
        return self.model

    def complete(self, messages: Sequence[dict[str, str]], n: int) -> list[str]:
        """n replies to `messages`: one request with `n` where the server supports it, else n requests.

        Raises:
            RequestFailed: a request failed after every retry.
            Refused: the server refused this request (a 4xx of its own).
            TeacherError: the run cannot go on (see the module docstring).
        """
        texts: list[str] = []
        if n > 1 and self.n_supported is not False:
            try:
                texts = self._ask(messages, n, 0)[:n]
            except Refused as exc:
                if not _about_n(exc):
                    raise
                self.n_supported = False
            else:
                self.n_supported = len(texts) >= n  # a server may ignore n and answer once
        while len(texts) < n:
            texts += self._ask(messages, 1, len(texts))[:1]
        return texts

    def _ask(self, messages: Sequence[dict[str, str]], n: int, sample: int) -> list[str]:
        body = {"model": self.model, "messages": list(messages), **self.sampling, **({"n": n} if n > 1 else {})}
        if self.seed is not None:  # the same for this prompt and sample whatever the order questions are asked in
            body["seed"] = request_seed(self.seed, messages, sample)
        data = self._post(body)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            return [""]  # a 200 without choices: an empty (invalid) candidate
        return [_content(choice) for choice in choices]

    def _post(self, body: dict[str, Any]) -> Any:
        """POST chat/completions with retries; the decoded JSON body of the 200."""
        import httpx

        why = ""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise RequestFailed("stopped")
            if attempt:
                with self._lock:
                    self.counters.retries += 1
            with self._lock:
                self.counters.requests += 1
            wait = None
            try:
                response = self._client.post("chat/completions", json=body)
            except httpx.TimeoutException:
                why = f"no reply within --timeout {self.timeout:g} s"
            except httpx.ConnectError as exc:
                if attempt == self.retries:
                    raise self._unreachable(exc) from None
                why = f"cannot connect ({exc})"
            except httpx.TransportError as exc:  # the connection broke during the exchange
                why = f"connection broken ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return response.json()
                    except ValueError:
                        why = "a 200 reply that is not JSON"
                elif status == 429 or status >= 500:
                    why, wait = f"HTTP {status}", retry_after(response.headers.get("retry-after"))
                else:
                    raise self._client_error(response)
            if attempt < self.retries:
                self.stop.wait(wait if wait is not None else backoff(attempt, self.backoff_s))
        raise RequestFailed(f"{why}, {self.retries + 1} attempt(s)")

    def _client_error(self, response: Any) -> Exception:
        message, param = _error_body(response)
        status = response.status_code
        if status in (401, 403):
            return self._refused_key(status)
        if status == 404:
            return TeacherError(f"the teacher at {self.url} answered 404 for {self.url}/chat/completions ({message}): check that "
                                "--teacher is the API's base URL (it usually ends in /v1) and that --teacher-model "
                                f"{self.model!r} is one of its models")
        if param in _SETTINGS:  # a setting every request carries: every question would be refused the same way
            return TeacherError(f"the teacher at {self.url} refused {param} (HTTP {status}: {message}); change "
                                f"{_SETTINGS[param]} for this model")
        return Refused(status, message, param)

    def _unreachable(self, exc: Exception) -> TeacherError:
        return TeacherError(f"cannot reach the teacher at {self.url} ({type(exc).__name__}: {exc}): check the URL (an "
                            "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1), that the server is running, and "
                            "your network or proxy settings")

    def _refused_key(self, status: int) -> TeacherError:
        return TeacherError(f"the teacher at {self.url} refused the request (HTTP {status}): check the API key "
                            "(--api-key-env NAME names the environment variable that holds it)")


# Request fields that come from synth's options, by the option to change when a server refuses one
# (`n` is not here: a server without n gets one request per sample instead).
_SETTINGS = {"model": "--teacher-model", "temperature": "--temperature", "top_p": "--top-p", "max_tokens": "--max-new-tokens",
             "seed": "--seed"}


def request_seed(seed: int, messages: Sequence[dict[str, str]], sample: int) -> int:
    """The `seed` of the request for `sample` (0-based) of `messages`: a 31-bit number from all three."""
    text = json.dumps([seed, list(messages), sample], ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> 1


def backoff(attempt: int, base_s: float, cap_s: float = 30.0) -> float:
    """Seconds before retry `attempt + 1`: base x 2^attempt, capped, with jitter (half to all of it)."""
    return min(cap_s, base_s * 2**attempt) * random.uniform(0.5, 1.0)


def retry_after(value: str | None) -> float | None:
    """Seconds that a Retry-After header asks for (delta-seconds or an HTTP date), at most MAX_RETRY_AFTER_S."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _content(choice: Any) -> str:
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _error_body(response: Any) -> tuple[str, str | None]:
    """The message and param of an OpenAI-style error body (the body's start when it has another shape)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:500], error.get("param") if isinstance(error.get("param"), str) else None
    return response.text[:200].strip() or f"HTTP {response.status_code}", None


def _about_n(exc: Refused) -> bool:
    """Whether a refusal is about the `n` parameter (the server gives one choice per request)."""
    return exc.param == "n" or re.search(r"\bn\b", exc.message) is not None


def _model_ids(response: Any) -> list[str]:
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return []
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(data, list) else []
