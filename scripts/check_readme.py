#!/usr/bin/env python3
"""Run the README's commands as written, so that the README cannot drift from the tool.

Every ```bash block that follows a `<!-- ci: run -->` line is run, line by line, in the repository
root, in README order (later blocks use the run the Quickstart trained). Each command must exit 0.
Blocks without the mark (hub models, GPUs, Docker) are listed as skipped.

The only change to a command is a budget, so that CI stays within its time: the flags in BUDGET are
appended to the `qdtool` subcommands named there (a 2-step training instead of a full one, 8
questions instead of 200). Nothing else is rewritten.

    python scripts/check_readme.py            # from the repository root (CI: .ci/run)
    python scripts/check_readme.py --list     # show what would run
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- ci: run -->"
BUDGET = {
    "train": ["--max-steps", "2"],
    "eval": ["--limit", "8"],
}


def blocks(readme: str) -> list[tuple[int, bool, list[str]]]:
    """(line number, marked, commands) for every ```bash block."""
    found = []
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i + 1
            marked = any(lines[j].strip() == MARK for j in range(max(0, i - 2), i))
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            commands = [line for line in body if line.strip() and not line.lstrip().startswith("#")]
            found.append((start, marked, commands))
        i += 1
    return found


def with_budget(command: str) -> str:
    """Append the budget flags after each budgeted `qdtool SUBCOMMAND ...` segment of a shell line."""
    parts = re.split(r"(\s(?:&&|\|\||\||;)\s)", command)
    out = []
    for part in parts:
        words = part.split("#", 1)[0].split() if " #" in part else part.split()
        if len(words) >= 2 and words[0] == "qdtool" and words[1] in BUDGET:
            code = part.split(" #", 1)[0].rstrip()
            part = code + " " + " ".join(shlex.quote(flag) for flag in BUDGET[words[1]])
        out.append(part)
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args()

    found = blocks(args.readme.read_text(encoding="utf-8"))
    todo = [(line, [with_budget(c) for c in commands]) for line, marked, commands in found if marked]
    skipped = [line for line, marked, _ in found if not marked]
    print(f"README: {len(todo)} block(s) to run, {len(skipped)} skipped (lines {', '.join(map(str, skipped)) or '-'})")
    if args.list:
        for line, commands in todo:
            print(f"-- README.md:{line}")
            for command in commands:
                print(f"   $ {command}")
        return 0

    # The Quickstart installs as a user would, into a home of its own: scripts/install.sh puts the
    # venv and the `qdtool` link there, ahead of any qdtool already on PATH.
    home = Path(os.environ.get("QDTOOL_README_HOME") or tempfile.mkdtemp(prefix="qdtool-readme-home-"))
    env = dict(os.environ, HOME=str(home), PATH=f"{home / '.local' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    for line, commands in todo:
        for command in commands:
            print(f"\n$ {command}    (README.md:{line})", flush=True)
            began = time.monotonic()
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO, env=env)
            print(f"-> exit {done.returncode} in {time.monotonic() - began:.0f} s", flush=True)
            if done.returncode != 0:
                print(f"README.md:{line}: `{command}` exited {done.returncode}", file=sys.stderr)
                return 1
    print(f"\nREADME: every marked command ran and exited 0 ({sum(len(c) for _, c in todo)} commands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
