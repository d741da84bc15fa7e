"""Shared fixtures: a tokenizer made locally and tiny models built from a config (no network)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

# No network, ever: anything that tries the hub fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "data"

# Gemma-style turns, enough to exercise the chat path of the renderer.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _corpus() -> list[str]:
    lines = []
    for path in sorted(EXAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[:200]:
            record = json.loads(line)
            lines.append(record["question"])
            lines.extend(record["sub_questions"])
    lines.append("### Instruction:\n### Question:\n### Sub-questions:\n1. 2. 3. 4. 5. #1 #2 #3")
    return lines


def build_tokenizer(chat: bool = False):
    """A small byte-level BPE tokenizer trained here, with <bos>/<eos>/<pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_chat_tokenizer():
    return build_tokenizer(chat=True)


def build_tiny_model(vocab_size: int, seed: int = 0, tied: bool = False):
    """A 2-layer, 64-wide Llama-architecture model with random weights (`tied`: the LM head is the
    input embedding, as in Gemma)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny model + tokenizer directory, as `from_pretrained` expects."""
    directory = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(len(tiny_tokenizer)).save_pretrained(directory, safe_serialization=True)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """A QDTOOL_CACHE for the session in which the embedded model is converted once.

    Set QDTOOL_TEST_CACHE to reuse a cache across runs (the conversion takes about a minute).
    """
    reuse = os.environ.get("QDTOOL_TEST_CACHE")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("qdtool-cache")


@pytest.fixture
def use_embedded_cache(embedded_cache, monkeypatch) -> Path:
    monkeypatch.setenv("QDTOOL_CACHE", str(embedded_cache))
    return embedded_cache


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, tmp_path):
    """No test writes to the user's real cache by accident."""
    if "use_embedded_cache" not in request.fixturenames:
        monkeypatch.setenv("QDTOOL_CACHE", str(tmp_path / "cache"))


GIB = 2**30  # an "8 GB" card has 8 GiB (8,192 MiB) of memory


def fake_nvml(monkeypatch, sizes_gb: list[int], used_gib: float = 0.3):
    """A stand-in pynvml with GPUs of the given sizes; `used_gib` is taken (display, other processes)."""
    module = types.SimpleNamespace()
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: len(sizes_gb)
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda i: f"Fake GPU {sizes_gb[i]}GB"
    module.nvmlDeviceGetMemoryInfo = lambda i: types.SimpleNamespace(total=sizes_gb[i] * GIB, free=sizes_gb[i] * GIB - used_gib * 2**30)
    module.nvmlDeviceGetCudaComputeCapability = lambda i: (8, 9)
    module.nvmlSystemGetDriverVersion = lambda: "560.35"
    module.nvmlSystemGetCudaDriverVersion = lambda: 12060
    monkeypatch.setitem(sys.modules, "pynvml", module)


@pytest.fixture
def captured_train(monkeypatch) -> dict:
    """Replace core training: `qdtool train` resolves its configuration, which lands in ["config"]."""
    import qdtool.core.training as training

    seen: dict = {}

    def fake_train(settings, **kwargs):
        seen["config"] = settings
        raise SystemExit(0)

    monkeypatch.setattr(training, "train", fake_train)
    return seen


# `qdtool train` with each step 0.3 s slower, run as `python -c SLOW_TRAIN ARGS` or as a torchrun
# script, so that a test can kill it mid-run. With PID_DIR set, each process writes its pid there
# under its RANK (torchrun starts its workers in sessions of their own).
SLOW_TRAIN = """
import os, sys, time
from pathlib import Path
if os.environ.get("PID_DIR"):
    Path(os.environ["PID_DIR"], os.environ.get("RANK", "0")).write_text(str(os.getpid()))
from qdtool.core.training import step
real = step.train_step
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
step.train_step = slow
from qdtool.cli.app import app
app(sys.argv[1:])
"""
