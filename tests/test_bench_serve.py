"""bench/serve_load.py runs end to end on the tiny model: both phases measured, the hostile mix refused, none lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_serve_load_measures_both_phases_and_survives_the_hostile_mix(tiny_model_dir, tmp_path):
    out = tmp_path / "serve.jsonl"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "serve_load.py"), "--model", str(tiny_model_dir), "--clients", "4",
                           "--requests", "8", "--hostile", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["side"] for r in rows] == ["one at a time", "4 clients"]
    assert all((r["requests"], r["ok"], r["failed"]) == (8, 8, 0) and r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"]
               for r in rows)
    hostile = rows[1]["hostile"]
    assert hostile["sent"] >= 10 and hostile["5xx"] == hostile["unexpected"] == 0
    assert hostile["4xx"] + hostile["reset"] == hostile["sent"]
    assert "speed-up:" in done.stdout and "SIGTERM -> exit 0" in done.stdout
