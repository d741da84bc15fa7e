"""`qdtool serve` under load: N concurrent clients vs the same requests one at a time, on loopback.

    python bench/serve_load.py --model embedded --clients 32 --requests 256 --hostile

Starts `qdtool serve MODEL` on a free loopback port (or uses --url), sends --requests single-question
`/v1/decompose` requests one at a time, then the same requests from --clients concurrent clients
(each its own connection), and prints requests/s, p50/p99 latency and failures for both. With
--hostile, a hostile mix runs during the concurrent phase: oversize bodies, malformed JSON, wrong
types, unknown fields, over-long questions, no or a wrong API key, and clients that disconnect
mid-request. Every one must get a 4xx (a disconnect gets nothing), every good request a 200.
Exits 1 when a good request failed, a hostile one got a 5xx, or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key"


@dataclass
class Phase:
    label: str
    latencies: list[float] = field(default_factory=list)  # seconds, good requests answered 200
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> dict:
        done = sorted(self.latencies)
        pick = (lambda q: done[min(len(done) - 1, int(q * len(done)))] * 1000) if done else (lambda q: float("nan"))
        return {"side": self.label, "requests": len(done) + len(self.failed), "ok": len(done), "failed": len(self.failed),
                "requests_per_s": round(len(done) / self.seconds, 3) if self.seconds else 0.0,
                "p50_ms": round(pick(0.50), 1), "p99_ms": round(pick(0.99), 1), "seconds": round(self.seconds, 2)}


def main() -> int:
    args = _parse()
    questions = [json.loads(line)["question"] for line in Path(args.data).read_text(encoding="utf-8").splitlines()]
    prompts = [questions[i % len(questions)] for i in range(args.requests)]
    with _server(args) as url:
        health = asyncio.run(_bench(url, prompts, args))
    rows, hostile, failures = health.pop("rows"), health.pop("hostile"), health.pop("failures")
    _print(rows, hostile, health, args)
    for failure in failures[:5]:
        print(f"failed: {failure}", file=sys.stderr)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"bench": "serve_load", **row, "model": args.model, "clients": args.clients,
                                    "max_new_tokens": args.max_new_tokens, "hostile": hostile, "date": date.today().isoformat()}) + "\n")
    bad = sum(r["failed"] for r in rows) + hostile.get("5xx", 0) + hostile.get("unexpected", 0)
    return 1 if bad else 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="run dir, merged dir, hub id or 'embedded'")
    parser.add_argument("--url", help="an already running server (its key in QDTOOL_API_KEY) instead of starting one")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the concurrent phase")
    parser.add_argument("--requests", type=int, default=128, help="good requests per phase (one question each)")
    parser.add_argument("--hostile", action="store_true", help="send the hostile mix during the concurrent phase")
    parser.add_argument("--hostile-pause", type=float, default=0.25,
                        help="seconds between rounds of the hostile mix (a round: each kind once, then a hang-up)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="passed to qdtool serve")
    parser.add_argument("--max-batch", type=int, default=16, help="passed to qdtool serve")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="passed to qdtool serve")
    parser.add_argument("--device", default="auto", help="passed to qdtool serve")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a good request may take")
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "strategyqa_val.jsonl"))
    parser.add_argument("--out", help="append one JSON line per phase here (e.g. docs/benchmarks/serve_load.jsonl)")
    return parser.parse_args()


class _server:
    """`qdtool serve` in a subprocess on a free loopback port, stopped with SIGTERM (it must exit 0)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.proc, self.log = args, None, None

    def __enter__(self) -> str:
        if self.args.url:
            return self.args.url.rstrip("/")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        a = self.args
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-load-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", "qdtool", "serve", a.model, "--port", str(port), "--no-access-log", "--device", a.device,
                   "--max-new-tokens", str(a.max_new_tokens), "--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms)]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "QDTOOL_API_KEY": KEY})
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"qdtool serve exited with {self.proc.returncode}:\n{Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.5)
        raise SystemExit("qdtool serve did not answer /health within 600 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        print(f"server: SIGTERM -> exit {code} (log: {self.log.name})")
        if code != 0:
            print(Path(self.log.name).read_text()[-3000:], file=sys.stderr)


async def _bench(url: str, prompts: list[str], args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {os.environ.get('QDTOOL_API_KEY', KEY) if args.url else KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout, trust_env=False) as warm:
        await warm.post("/v1/decompose", json={"question": prompts[0]})  # first-call costs out of both phases
    sequential = await _phase("one at a time", url, headers, prompts, 1, args.timeout)
    stop = asyncio.Event()
    hostile_task = asyncio.create_task(_hostile(url, headers, prompts, stop, args.hostile_pause)) if args.hostile else None
    concurrent = await _phase(f"{args.clients} clients", url, headers, prompts, args.clients, args.timeout)
    stop.set()
    hostile = await hostile_task if hostile_task else {}
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
        health = (await client.get("/health")).json()
    return {**health, "rows": [sequential.row(), concurrent.row()], "hostile": hostile, "failures": sequential.failed + concurrent.failed}


async def _phase(label: str, url: str, headers: dict, prompts: list[str], clients: int, timeout: float) -> Phase:
    phase, queue = Phase(label), list(reversed(prompts))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, trust_env=False) as http:
            while queue:
                question = queue.pop()
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/decompose", json={"question": question})
                    if response.status_code == 200 and response.json()["results"][0]["question"] == question:
                        phase.latencies.append(time.perf_counter() - started)
                    else:
                        phase.failed.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    phase.failed.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    phase.seconds = time.perf_counter() - started
    return phase


def _hostile_requests(prompts: list[str], headers: dict) -> list[tuple[str, dict]]:
    """(name, httpx request arguments) of each kind of hostile request."""
    good = json.dumps({"question": prompts[0]})
    return [
        ("oversize body", {"content": json.dumps({"question": "x" * 2_000_000}), "headers": headers}),
        ("malformed JSON", {"content": '{"question": "unterminated', "headers": headers}),
        ("not an object", {"content": "[1, 2, 3]", "headers": headers}),
        ("wrong type", {"content": json.dumps({"questions": "one string"}), "headers": headers}),
        ("unknown field", {"content": json.dumps({"question": prompts[0], "temperature": 2}), "headers": headers}),
        ("question too long", {"content": json.dumps({"question": "why " * 5000}), "headers": headers}),
        ("empty question", {"content": json.dumps({"question": "  "}), "headers": headers}),
        ("no API key", {"content": good}),
        ("wrong API key", {"content": good, "headers": {"Authorization": "Bearer wrong"}}),
        ("not UTF-8", {"content": b'{"question": "\xff\xfe"}', "headers": headers}),
    ]


async def _hostile(url: str, headers: dict, prompts: list[str], stop: asyncio.Event, pause: float) -> dict:
    """Rounds of hostile requests until `stop` (one round at least): counts of 4xx, 5xx, anything else, and disconnects."""
    counts = {"sent": 0, "4xx": 0, "5xx": 0, "reset": 0, "unexpected": 0, "disconnects": 0}
    kinds = _hostile_requests(prompts, headers)
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as http:
        while True:
            for _name, request in kinds:
                counts["sent"] += 1
                try:
                    status = (await http.post("/v1/decompose", **request)).status_code
                except httpx.HTTPError:
                    status = 0
                # A reset (the server closed an oversize upload it stopped reading) is a refusal too; a 2xx is not.
                key = "reset" if status == 0 else "4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "unexpected"
                counts[key] += 1
            counts["disconnects"] += await _disconnect_mid_request(url, headers, prompts)
            if stop.is_set():
                return counts
            await asyncio.sleep(pause)


async def _disconnect_mid_request(url: str, headers: dict, prompts: list[str]) -> int:
    """A client that sends a good request and hangs up before its answer (a fresh connection, closed)."""
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, trust_env=False) as http:
        try:
            await asyncio.wait_for(http.post("/v1/decompose", json={"questions": prompts[:4]}), 0.05)
        except (asyncio.TimeoutError, httpx.HTTPError):
            return 1
    return 0


def _print(rows: list[dict], hostile: dict, health: dict, args: argparse.Namespace) -> None:
    print(f"{'side':<16} {'requests':>8} {'ok':>6} {'failed':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['side']:<16} {r['requests']:>8} {r['ok']:>6} {r['failed']:>6} {r['requests_per_s']:>8.2f} "
              f"{r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['seconds']:>8.1f}")
    base = rows[0]["requests_per_s"]
    ratio = rows[1]["requests_per_s"] / base if base else float("nan")
    print(f"speed-up: {ratio:.2f}x ({args.model}, {args.clients} clients, max {args.max_new_tokens} new tokens; server: "
          f"{health.get('batches')} batches, largest {health.get('largest_batch')}, {health.get('failed')} failed questions)")
    if hostile:
        print("hostile: " + ", ".join(f"{k} {v}" for k, v in hostile.items()))


if __name__ == "__main__":
    sys.exit(main())
