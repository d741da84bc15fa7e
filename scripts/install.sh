#!/usr/bin/env bash
# Install qdtool with the PyTorch build this machine can use, as pipx would: its own venv, and a
# `qdtool` link in ~/.local/bin.
#
#   scripts/install.sh                      # from a clone of the repository
#   scripts/install.sh --venv .venv --dev   # editable, with the test tools (for development)
#
# Why a script: `pip install .` on a Linux machine without a GPU pulls PyPI's torch, a CUDA build
# of several GB with ~17 NVIDIA packages. With no NVIDIA GPU this installs the CPU build instead
# (a wheel already on this machine, if pip's find-links has one, else PyTorch's CPU index).
# QDTOOL_TORCH=cpu|cuda overrides the detection.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
torch_version="2.13.0"
venv="${QDTOOL_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/qdtool}/venv"
bin_dir="$HOME/.local/bin"
link=1
extras=""
editable=""

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; link=0; shift 2 ;;
    --dev) extras="[dev]"; editable="-e"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "install.sh: Python 3.10 or newer is needed ($python is $("$python" -V 2>&1 || echo missing))" >&2
  exit 1
fi

kind="${QDTOOL_TORCH:-}"
if [ -z "$kind" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then kind=cuda; else kind=cpu; fi
fi
case "$kind" in cpu|cuda) ;; *) echo "install.sh: QDTOOL_TORCH must be cpu or cuda (got $kind)" >&2; exit 2 ;; esac

echo "qdtool: installing into $venv (PyTorch $torch_version, $kind build)"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet)
"${pip[@]}" install --upgrade pip

if [ "$kind" = cuda ]; then
  "${pip[@]}" install "torch==$torch_version"  # PyPI's Linux wheel is the CUDA build
elif "${pip[@]}" install --no-index --no-deps "torch==$torch_version" 2>/dev/null; then
  "${pip[@]}" install "torch==$torch_version"  # the local CPU wheel is in; this adds its small dependencies
else
  "${pip[@]}" install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu \
    --extra-index-url https://pypi.org/simple
fi

"${pip[@]}" install $editable "$repo$extras"

if [ "$link" = 1 ]; then
  mkdir -p "$bin_dir"
  ln -sf "$venv/bin/qdtool" "$bin_dir/qdtool"
  echo "qdtool: linked $bin_dir/qdtool"
  case ":$PATH:" in *":$bin_dir:"*) ;; *) echo "qdtool: add $bin_dir to your PATH (e.g. export PATH=\"$bin_dir:\$PATH\")" ;; esac
else
  echo "qdtool: activate with: . $venv/bin/activate"
fi
"$venv/bin/python" -c "import torch, qdtool; print(f'qdtool {qdtool.__version__} with torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
