"""A scripted OpenAI-compatible teacher for the synth tests, run as a real subprocess on 127.0.0.1.

    python synth_fake_teacher.py --script script.json --log requests.jsonl [--delay 0.5] [--no-n] [--key KEY]

It prints `PORT <port>` once it listens. The script maps a question (the last user message) to the
list of actions for its successive requests (the last one repeats); "*" is the default list:

    {"texts": ["1. ...", "2. ..."]}        200 with these choices (cycled to the request's n)
    {"status": 500} / {"status": 400, "message": "..."}
    {"status": 429, "retry_after": 1}      with a Retry-After header
    {"hang": 3}                            sleep 3 s, then answer as the next action would

Every request is logged as one JSON line: time, question, n, seed, model, messages, whether it had the key.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ARGS = argparse.Namespace()
LOCK = threading.Lock()
SEEN: dict[str, int] = {}


def _action(question: str) -> dict:
    """The action for this question's next request (the last one repeats)."""
    with LOCK:
        attempt = SEEN.get(question, 0)
        SEEN[question] = attempt + 1
    actions = ARGS.script.get(question) or ARGS.script.get("*") or [{"texts": ["1. What is it?\n2. Is #1 true?"]}]
    return actions[min(attempt, len(actions) - 1)]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    def _authorized(self) -> bool:
        if ARGS.key and self.headers.get("Authorization") != f"Bearer {ARGS.key}":
            self._send(401, {"error": {"message": "wrong API key", "type": "authentication_error"}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/v1/models":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        self._send(200, {"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        question = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        n = body.get("n", 1)
        with LOCK, open(ARGS.log, "a", encoding="utf-8") as log:
            log.write(json.dumps({"t": time.time(), "question": question, "n": n, "seed": body.get("seed"), "model": body.get("model"),
                                  "messages": body["messages"], "keyed": "Authorization" in self.headers}, ensure_ascii=False) + "\n")
        if not self._authorized():
            return
        if ARGS.delay:
            time.sleep(ARGS.delay)
        action = _action(question)
        if "hang" in action:
            time.sleep(action["hang"])  # the client has given up by now; what follows goes nowhere
        if "status" in action:
            headers = {"Retry-After": str(action["retry_after"])} if "retry_after" in action else {}
            self._send(action["status"], {"error": {"message": action.get("message", "scripted failure"), "param": action.get("param")}},
                       headers)
            return
        if ARGS.no_n and n > 1:
            self._send(400, {"error": {"message": f"n is {n}: send n=1", "param": "n"}})
            return
        texts = action.get("texts") or ["1. What is it?\n2. Is #1 true?"]
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i % len(texts)]}, "finish_reason": "stop"}
                   for i in range(n)]
        self._send(200, {"object": "chat.completion", "model": body.get("model"), "choices": choices})


def start(tmp_path: Path, script: dict, *flags: str) -> tuple[subprocess.Popen, str, Path]:
    """Run this file as a server for `script`; returns the process, its base URL (.../v1) and its request log."""
    script_path, log = tmp_path / "teacher_script.json", tmp_path / "teacher_requests.jsonl"
    script_path.write_text(json.dumps(script, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, __file__, "--script", str(script_path), "--log", str(log), *flags],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1", log


def requests(log: Path) -> list[dict]:
    """The requests the server logged, in order."""
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--script", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--no-n", action="store_true")
    parser.add_argument("--key", default="")
    args = parser.parse_args()
    with open(args.script, encoding="utf-8") as f:
        args.script = json.load(f)
    ARGS.__dict__.update(vars(args))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
