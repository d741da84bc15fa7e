"""core/merging.py: the merged model equals base + adapter, and the output is complete and safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qdtool.config import load_train_config
from qdtool.core import training
from qdtool.core.merging import merge
from qdtool.errors import TrainingError, UsageError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = load_train_config(overrides=dict(
        model=str(tiny_model_dir), data=str(EXAMPLES / "sample_train.json"), output_dir=str(out), max_steps=3,
        batch_tokens=1024, max_seq_len=512, lr=5e-2, report_to="none", eval_split=0.2, lora_r=4))
    training.train(config)
    return out


def test_merged_logits_equal_base_plus_adapter(tiny_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert result.check.reference == "fp64" and result.check.error <= 1e-5 and result.check.top1_agreement == 1.0
    assert result.check.adapter_effect > 0.01  # trained: the adapter moves the logits, so the check compares something
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = PeftModel.from_pretrained(base, str(tiny_run / "adapter")).eval()
    ids = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
        # and the adapter really changed the model (the check above is not trivially true)
        assert (reference(ids).logits - AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits).abs().max() > 1e-3


def test_merged_dir_is_standalone(tiny_run, tmp_path):
    out = tmp_path / "merged"
    merge(tiny_run, out, dtype="bf16")
    names = {p.name for p in out.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "run_config.yaml",
                "qdtool_merge.json"}
    assert expected <= names
    assert not any(n.endswith(".bin") for n in names)
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert generation["eos_token_id"] == 1 and tokenizer_config["eos_token"] == "<eos>"
    card = (out / "README.md").read_text()
    assert "base model" in card and "lr:" in card
    marker = json.loads((out / "qdtool_merge.json").read_text())
    assert set(marker["check"]) == {"error", "rounding", "allowed", "adapter_effect", "top1_agreement", "top1_agreement_rounding",
                                    "positions", "reference"}
    check = marker["check"]
    assert 0 < check["rounding"] < check["allowed"] and check["error"] <= check["allowed"]
    assert f"| merge check | merged bf16 logits {100 * check['error']:.2g}% (relative L2) from base + adapter in fp32" in card
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_refusals(tiny_run, tmp_path):
    out = tmp_path / "merged"
    merge(tiny_run, out, dtype="fp32")
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        merge(tiny_run, out, dtype="fp32")
    merge(tiny_run, out, dtype="fp32", overwrite=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not a complete qdtool merge output .*will not delete it"):
        merge(tiny_run, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "x"
    with pytest.raises(UsageError, match="is not a qdtool run"):
        merge(tmp_path, tmp_path / "m2")


def test_a_failing_check_writes_nothing(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.merging as merging

    monkeypatch.setattr(merging, "NOISE_FACTOR", 0.0)
    monkeypatch.setattr(merging, "ERROR_FLOOR", 0.0)
    message = r"merge check failed: merged fp32 logits [0-9.e-]+% \(relative L2\) from base \+ adapter in fp64, allowed 0% "
    message += r".*Nothing was written"
    with pytest.raises(TrainingError, match=message):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert not (tmp_path / "merged").exists()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("failure", [RuntimeError("killed"), OSError(28, "No space left on device")], ids=["crash", "disk-full"])
def test_overwrite_keeps_the_old_model_until_the_new_one_is_complete(tiny_run, tmp_path, monkeypatch, failure):
    """A merge --overwrite that dies after the weights are written leaves the old merge whole."""
    import qdtool.core.merging as merging
    from qdtool.core.files import WriteError

    out = tmp_path / "merged"
    merge(tiny_run, out, dtype="fp32")
    before = _snapshot(out)

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(merging, "_generation_config", broken)  # after the weights and the tokenizer are saved
    with pytest.raises(WriteError if isinstance(failure, OSError) else RuntimeError) as info:
        merge(tiny_run, out, dtype="bf16", overwrite=True)
    if isinstance(failure, OSError):
        assert "no space left on the device holding" in str(info.value) and str(out) in str(info.value)
    assert _snapshot(out) == before  # the fp32 model, byte for byte
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp dir left behind


def test_an_interrupted_first_merge_leaves_no_output(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.merging as merging

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merging, "_generation_config", killed)
    with pytest.raises(KeyboardInterrupt):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_its_adapter_says_so(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "run_config.yaml", run / "run_config.yaml")
    with pytest.raises(UsageError, match=r"has no adapter/.*may not have finished training.*qdtool train --config"):
        merge(run, tmp_path / "m")
    with pytest.raises(UsageError, match=f"adapter of a run; pass the run directory instead: qdtool merge {tiny_run}$"):
        merge(tiny_run / "adapter", tmp_path / "m")


def test_a_full_fine_tuning_run_has_nothing_to_merge(tiny_run, tmp_path):
    """method full writes model/, not adapter/: merge says so instead of asking to resume training."""
    run = tmp_path / "full"
    run.mkdir()
    saved = (tiny_run / "run_config.yaml").read_text(encoding="utf-8")
    assert "method: lora" in saved
    (run / "run_config.yaml").write_text(saved.replace("method: lora", "method: full"), encoding="utf-8")
    with pytest.raises(UsageError, match=r"full fine-tuning run \(method full\) without model/ yet.*no adapter to merge"):
        merge(run, tmp_path / "m")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match=r"there is no adapter to merge, .*model is already a standalone model"):
        merge(run, tmp_path / "m")


def test_a_pickle_adapter_is_refused_before_anything_loads(tiny_run, tmp_path, monkeypatch):
    import pickle
    import shutil

    import qdtool.core.modeling as modeling
    from qdtool.errors import ModelError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (run / "adapter" / "adapter_model.bin").write_bytes(pickle.dumps(_Planted(str(marker))))
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    with pytest.raises(ModelError) as info:
        merge(run, tmp_path / "m", dtype="fp32")
    message = str(info.value)
    assert "adapter_model.bin is a pickle file" in message and "did not open it" in message
    assert "weights_only=False" not in message and "UnpicklingError" not in message
    assert not marker.exists() and not (tmp_path / "m").exists()


class _Planted:
    """A pickle that creates a file when it is loaded (what a hostile .bin does, harmlessly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_read_only_destination_fails_before_the_model_loads(tiny_run, tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the file system says EROFS here instead."""
    import errno
    import tempfile

    import qdtool.core.modeling as modeling

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    with pytest.raises(UsageError, match=f"cannot write {tmp_path}: the file system is read-only"):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")


@pytest.mark.parametrize("chat", [False, True])
def test_the_check_runs_on_samples_encoded_as_training_encodes_them(tiny_tokenizer, tiny_chat_tokenizer, chat):
    from qdtool.config import TrainConfig
    from qdtool.core.merging import PROBES, probe_batch
    from qdtool.core.prompts import encode_sample

    tokenizer = tiny_chat_tokenizer if chat else tiny_tokenizer
    config = TrainConfig(language="ko", instruction="Split it.")
    batch = probe_batch(tokenizer, config.prompt_options())
    rows = [encode_sample(tokenizer, q, ["First step?", "Second step using #1?"], config.prompt_options()).input_ids for q in PROBES]
    width = max(len(r) for r in rows)
    assert batch["input_ids"].shape == (len(PROBES), width)
    for got, mask, row in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), rows, strict=True):
        assert got[: len(row)] == row and mask == [1] * len(row) + [0] * (width - len(row))  # right-padded


# --- the check: a correct merge passes in every dtype, a wrong one fails in every dtype ----------------------------


def _run_with_adapter(tiny_run: Path, base_dir: Path, root: Path, *, seed: int, rank: int, scale: float) -> Path:
    """A copy of `tiny_run` on `base_dir` whose adapter is random (rank `rank`, lora_B × `scale`), without training."""
    import shutil

    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = root / f"run-{base_dir.name}-s{seed}-r{rank}-x{scale:g}"
    shutil.copytree(tiny_run, run)
    settings = yaml.safe_load((run / "run_config.yaml").read_text())
    (run / "run_config.yaml").write_text(yaml.safe_dump({**settings, "model": str(base_dir), "lora_r": rank}))
    torch.manual_seed(seed)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)  # B random, not 0
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    model.save_pretrained(run / "adapter")
    return run


@pytest.fixture(scope="module")
def tied_model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny model whose LM head is its input embedding, as in Gemma."""
    from conftest import build_tiny_model

    directory = tmp_path_factory.mktemp("tied-model")
    build_tiny_model(len(tiny_tokenizer), seed=1, tied=True).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hot_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A run trained hard (lr 0.2, rank 8): its adapter weights are large and move the logits a lot."""
    out = tmp_path_factory.mktemp("runs") / "hot"
    config = load_train_config(overrides=dict(
        model=str(tiny_model_dir), data=str(EXAMPLES / "sample_train.json"), output_dir=str(out), max_steps=4,
        batch_tokens=1024, max_seq_len=512, lr=0.2, report_to="none", eval_split=0.2, lora_r=8))
    training.train(config)
    return out


def _lora_b_norm(run: Path) -> float:
    from safetensors.torch import load_file

    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    return sum(float(w.float().norm() ** 2) for name, w in weights.items() if "lora_B" in name) ** 0.5


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_a_trained_merge_passes_in_every_dtype(tiny_run, hot_run, dtype, tmp_path):
    assert _lora_b_norm(hot_run) > 3 * _lora_b_norm(tiny_run)  # the hot run's adapter weights really are large
    for run in (tiny_run, hot_run):
        check = merge(run, tmp_path / run.name, dtype=dtype).check
        assert check.passed and check.adapter_effect > 1.0 and check.top1_agreement >= 0.9  # the adapters dominate the tiny base


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(("seed", "rank", "scale"), [(0, 1, 0.05), (1, 4, 0.3), (2, 16, 1.0), (3, 64, 3.0)])
def test_a_correct_merge_passes_whatever_the_seed_rank_and_size(tiny_run, tiny_model_dir, tied_model_dir, tmp_path, dtype, seed, rank,
                                                              scale):
    base = tied_model_dir if seed % 2 else tiny_model_dir
    run = _run_with_adapter(tiny_run, base, tmp_path, seed=seed, rank=rank, scale=scale)
    check = merge(run, tmp_path / "merged", dtype=dtype).check
    assert check.passed and check.adapter_effect > 0.1
    assert check.reference == ("fp64" if dtype == "fp32" else "fp32") and 0 < check.rounding
    assert check.allowed == pytest.approx(max(4 * check.rounding, 1e-6)) and check.error <= 2 * check.rounding  # a margin of 2 at least


def _corrupted(model, where: str, factor: float):
    """`model` (a PeftModel) whose merge_and_unload leaves every LoRA module whose name contains `where` with `factor` times
    its delta instead of once (0: the module was skipped; 2: its scale was doubled)."""
    from peft.tuners.lora import LoraLayer

    real_merge = model.merge_and_unload

    def merge_and_unload():
        deltas = {name.removeprefix("base_model.model."): module.get_delta_weight("default")
                  for name, module in model.named_modules() if isinstance(module, LoraLayer) and where in name}
        assert deltas, where
        merged = real_merge()
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = merged.get_submodule(name).weight
                weight.data = (weight.data.float() + (factor - 1) * delta).to(weight.dtype)
        return merged

    model.merge_and_unload = merge_and_unload
    return model


def _corrupt_merge(monkeypatch, where: str, factor: float) -> None:
    """merge() loads the run's model as _corrupted(model, where, factor)."""
    import qdtool.core.merging as merging

    real_load = merging._load

    def load(*args, **kwargs):
        model, *rest = real_load(*args, **kwargs)
        return (_corrupted(model, where, factor), *rest)

    monkeypatch.setattr(merging, "_load", load)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(("where", "factor"), [("", 2.0), (".layers.1.", 0.0), (".layers.0.mlp.", 2.0), ("layers.1.mlp.down_proj", 0.0)],
                         ids=["scale-x2", "layer-1-dropped", "mlp-0-x2", "down-proj-1-dropped"])
def test_a_wrong_merge_fails_in_every_dtype(tiny_run, monkeypatch, tmp_path, dtype, where, factor):
    _corrupt_merge(monkeypatch, where, factor)
    with pytest.raises(TrainingError, match=f"merge check failed: merged {dtype} logits .* Nothing was written"):
        merge(tiny_run, tmp_path / "merged", dtype=dtype)
    assert not (tmp_path / "merged").exists()


def test_fp16_overflow_is_named_before_the_merge(tiny_run, tiny_model_dir, tmp_path):
    """A model whose activations exceed fp16's range (65504), as Gemma's do: refused with what to use instead."""
    import shutil

    import yaml
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base.model.norm.weight.fill_(6e4)  # representable in fp16; the logits it leads to are not
    hot = tmp_path / "hot-base"
    base.save_pretrained(hot)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    settings = yaml.safe_load((run / "run_config.yaml").read_text())
    (run / "run_config.yaml").write_text(yaml.safe_dump({**settings, "model": str(hot)}))
    said = []
    with pytest.raises(TrainingError, match=r"base \+ adapter, unmerged, gives non-finite logits in fp16 \(its activations overflow "
                                            r"fp16's range, 65504\); nothing was written. Use --dtype bf16 \(the default\) or fp32$"):
        merge(run, tmp_path / "merged", dtype="fp16", progress=said.append)
    assert "merging" not in said and not (tmp_path / "merged").exists()  # found on the first forward pass, before the merge
    merge(run, tmp_path / "merged", dtype="bf16")  # bf16 has the range


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(("stored_as", "precision"), [(torch.bfloat16, "fp32"), (torch.float32, "fp64")])
def test_computing_in_a_wider_precision_leaves_the_model_as_stored(tiny_model_dir, tied_model_dir, tied, stored_as, precision):
    from transformers import AutoModelForCausalLM

    from qdtool.core.merging import _computing_in

    directory = tied_model_dir if tied else tiny_model_dir
    wide = {"fp32": torch.float32, "fp64": torch.float64}[precision]
    stored = AutoModelForCausalLM.from_pretrained(directory, dtype=stored_as).eval()
    widened = AutoModelForCausalLM.from_pretrained(directory, dtype=stored_as).to(wide).eval()  # the same weights, stored wide
    before = {name: tensor.clone() for name, tensor in stored.state_dict().items()}
    ids = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46], [2, 50, 51, 52, 53, 54, 55, 56]])
    with torch.no_grad():
        with _computing_in(stored, precision):
            got = stored(ids).logits
        expected = widened(ids).logits
        as_stored = stored(ids).logits.to(wide)
    assert got.dtype == wide
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert (as_stored - expected).abs().max() > 100 * (got - expected).abs().max()  # computing as stored differs: the context acts
    after = stored.state_dict()
    assert all(after[name].dtype == stored_as and torch.equal(after[name], tensor) for name, tensor in before.items())
    assert (stored.get_output_embeddings().weight is stored.get_input_embeddings().weight) == tied  # still tied, or still not


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merging_in_16_bits_rounds_once_as_merging_in_fp32_then_casting(hot_run, tiny_model_dir, dtype):
    """What _merge_checked relies on to merge without an fp32 copy: PEFT keeps the adapter in fp32 and adds its product to
    each 16-bit weight with one rounding."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype), str(hot_run / "adapter"))
    expected = {name.removeprefix("base_model.model."): (module.base_layer.weight.float() + module.get_delta_weight("default")).to(dtype)
                for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    merged = model.merge_and_unload()
    assert len(expected) == 14  # 7 linear modules in each of 2 layers
    assert all(torch.equal(merged.get_submodule(name).weight, weight) for name, weight in expected.items())


@pytest.mark.embedded
def test_the_check_on_the_embedded_gemma(use_embedded_cache):
    """The real Gemma 3 270M in bf16 with an adapter that moves its logits as a 6-step run's does (~13%): the merge passes,
    its error about the unmerged bf16 model's. (Built, not trained: a trained embedded run takes minutes on CPU; wrong
    merges are failed on the tiny models above.)"""
    from peft import LoraConfig, get_peft_model

    from qdtool.config import TrainConfig
    from qdtool.core.merging import _merge_checked
    from qdtool.core.modeling import load_model, load_tokenizer

    torch.manual_seed(0)
    model = get_peft_model(load_model("embedded", dtype=torch.bfloat16),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.06)
    _, check = _merge_checked(model.eval(), load_tokenizer("embedded"), TrainConfig(), "bf16", lambda _m: None)
    assert check.passed and check.reference == "fp32" and 0.05 < check.adapter_effect < 0.5
    assert 0.002 < check.rounding < 0.05 and check.error <= 2 * check.rounding and check.top1_agreement >= 0.9
