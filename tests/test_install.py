"""scripts/install.sh picks the PyTorch build for the machine (the Quickstart's first command).

The real install is run by CI through scripts/check_readme.py; here a stand-in Python records the
pip commands, so the choice itself is checked on every machine in a second.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"

# A stand-in for python3: `-m venv DIR` makes DIR/bin/python (this same script); `-m pip ...` logs
# its arguments and fails for `--no-index` when NO_LOCAL_WHEEL is set; `-c` just succeeds.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; ln -sf python "$3/bin/qdtool"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$PIP_LOG"
  case "$*" in *--no-index*) [ -n "$NO_LOCAL_WHEEL" ] && exit 1 ;; esac
  exit 0
fi
exit 0
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _install(tmp_path: Path, *, gpu: bool, local_wheel: bool) -> list[str]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    _executable(bin_dir / "python3", FAKE_PYTHON)
    if gpu:
        _executable(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\necho 'GPU 0: NVIDIA GeForce RTX 4060 (UUID: GPU-x)'\n")
    log = tmp_path / "pip.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PIP_LOG": str(log)}
    if not local_wheel:
        env["NO_LOCAL_WHEEL"] = "1"
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "home" / ".local" / "bin" / "qdtool").is_symlink()
    return [line for line in log.read_text().splitlines() if "torch==" in line]


def test_no_gpu_and_no_local_wheel_takes_the_cpu_index(tmp_path):
    torch_lines = _install(tmp_path, gpu=False, local_wheel=False)
    assert any("--index-url https://download.pytorch.org/whl/cpu" in line for line in torch_lines), torch_lines
    assert all("torch==2.13.0" in line for line in torch_lines)


def test_no_gpu_with_a_local_cpu_wheel_uses_it_and_asks_no_index(tmp_path):
    torch_lines = _install(tmp_path, gpu=False, local_wheel=True)
    assert "--no-index --no-deps torch==2.13.0" in torch_lines[0]
    assert not any("download.pytorch.org" in line for line in torch_lines)


def test_a_gpu_takes_the_cuda_build_from_pypi(tmp_path):
    torch_lines = _install(tmp_path, gpu=True, local_wheel=True)
    assert len(torch_lines) == 1 and "--index-url" not in torch_lines[0] and "--no-index" not in torch_lines[0]


def test_a_wrong_override_is_refused(tmp_path):
    env = dict(os.environ, QDTOOL_TORCH="rocm", HOME=str(tmp_path))
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "QDTOOL_TORCH must be cpu or cuda" in done.stderr


@pytest.mark.parametrize("flag", ["--bogus"])
def test_unknown_options_are_usage_errors(tmp_path, flag):
    done = subprocess.run(["bash", str(SCRIPT), flag], capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 2 and "unknown option" in done.stderr
