"""config.py: every YAML in the repo validates; bad settings fail together, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdtool.config import TrainConfig, load_train_config
from qdtool.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_in_the_repo_is_valid_and_says_how_to_use_it(path):
    load_train_config(path)
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith(("# qdtool train --config configs/", "# torchrun --nproc_per_node 8 -m qdtool train --config configs/"))


def test_low_memory_is_the_rtx_4060_recipe():
    cfg = load_train_config(REPO / "configs" / "low_memory.yaml")
    assert (cfg.quantization, cfg.double_quant, cfg.lora_r, cfg.lora_alpha, cfg.max_seq_len, cfg.grad_accum, cfg.optimizer) == (
        "4bit", True, 8, 16, 256, 16, "paged_adamw_8bit")


def test_cli_overrides_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-3\nlora_r: 4\n")
    cfg = load_train_config(path, {"lora_r": 32, "seed": None})
    assert (cfg.lr, cfg.lora_r, cfg.seed) == (1e-3, 32, 42)


def test_all_problems_are_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rr: 8\nlr: -1\noverlong: maybe\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path, {"batch_tokens": 3})
    text = str(info.value)
    assert "lora_rr: unknown key (did you mean 'lora_r'?)" in text
    assert "lr: Input should be greater than 0" in text
    assert "overlong: Input should be 'drop', 'truncate' or 'error'" in text
    assert "batch_tokens: Input should be greater than or equal to 16" in text


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_train_config(None, {"batch_tokens": 100, "quantization": "8bit", "use_dora": True})
    assert "batch_tokens (100) must be at least max_seq_len (512) when packing" in str(info.value)
    assert "use_dora does not work with 8-bit quantization" in str(info.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_train_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_train_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(tmp_path / "broken.yaml")


def test_every_field_has_help():
    assert [name for name, info in TrainConfig.model_fields.items() if not info.description] == []


def test_method_full_refuses_quantization_and_fsdp_reported_with_the_others():
    with pytest.raises(ConfigError) as info:
        load_train_config(None, {"method": "full", "quantization": "4bit", "sharding": "fsdp", "batch_tokens": 100})
    text = str(info.value)
    assert "batch_tokens (100) must be at least max_seq_len (512) when packing" in text
    assert "method full trains the weights themselves, in fp32; quantization 4bit is not supported with it" in text
    assert "method full trains unsharded: use sharding none" in text
    with pytest.raises(ConfigError, match="train_embeddings applies to method full only"):
        load_train_config(None, {"train_embeddings": True})
    config = load_train_config(None, {"method": "full", "train_embeddings": True, "neftune_alpha": 5})
    assert (config.method, config.train_embeddings, config.neftune_alpha) == ("full", True, 5.0)
    assert (TrainConfig().method, TrainConfig().train_embeddings, TrainConfig().neftune_alpha) == ("lora", False, 0.0)
    with pytest.raises(ConfigError, match="neftune_alpha: Input should be greater than or equal to 0"):
        load_train_config(None, {"neftune_alpha": -1})
