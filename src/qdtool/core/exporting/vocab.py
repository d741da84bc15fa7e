"""The tokenizer as GGUF metadata: llama.cpp's `tokenizer.ggml.*` keys, built from a transformers tokenizer.

Two kinds exist in the models qdtool trains. Sentencepiece-style BPE with byte fallback (Gemma,
Llama 2, Mistral) is llama.cpp's "llama" tokenizer: tokens with scores (it merges the pair whose
result scores highest, and sentencepiece's BPE scores are the pieces' order) and token types.
Byte-level BPE (Llama 3, Qwen) is its "gpt2" tokenizer: tokens, merges, and the name of the
pre-tokenizer split, which llama.cpp knows by name only.

For Gemma 3 the result equals what llama.cpp itself wrote into the embedded model's GGUF: the same
tokens (runs of spaces spelled as spaces), token types and scores (a test compares them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from qdtool.errors import ModelError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")

# Pre-tokenizer splits llama.cpp knows, by the name it knows them (tokenizer.ggml.pre). The
# patterns are those of the tokenizers' own tokenizer.json files.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class Vocab:
    """The tokenizer.ggml.* values of one tokenizer."""

    model: str  # "llama" (sentencepiece-style) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] = field(default_factory=list)  # "llama" only
    merges: list[str] = field(default_factory=list)  # "gpt2" only
    add_space_prefix: bool | None = None  # "llama" only
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    chat_template: str | None = None


def vocab_of(tokenizer: Any, vocab_size: int, *, gemma: bool = False) -> Vocab:
    """The GGUF tokenizer of a fast tokenizer, padded to the model's `vocab_size` (its embedding rows).

    Raises:
        ModelError: a tokenizer kind llama.cpp has no equivalent for, or more tokens than embedding rows.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("qdtool export needs a fast tokenizer (a tokenizer.json); this model has a slow one only")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    kind = _kind(spec)
    tokens, types = _tokens(spec, vocab_size, sentencepiece=kind == "llama", gemma=gemma)
    vocab = Vocab(kind, "default" if kind == "llama" else _pre(spec), tokens, types)
    if kind == "llama":
        vocab.scores = _scores(types)
        vocab.add_space_prefix = _adds_space_prefix(spec)
    else:
        vocab.merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(token_id, int):
            vocab.special_ids[name] = token_id
    template = getattr(tokenizer, "chat_template", None)
    vocab.chat_template = template if isinstance(template, str) and template else None
    return vocab


def _kind(spec: dict[str, Any]) -> str:
    model = spec.get("model", {})
    text = json.dumps({k: spec.get(k) for k in ("normalizer", "pre_tokenizer")}, ensure_ascii=False)
    if model.get("type") == "BPE" and model.get("byte_fallback") and ("\u2581" in text or "Metaspace" in text):
        return "llama"
    if model.get("type") == "BPE" and '"ByteLevel"' in text:
        return "gpt2"
    raise ModelError(f"qdtool export cannot write this tokenizer to GGUF (a {model.get('type')} model"
                     f"{' with byte fallback' if model.get('byte_fallback') else ''}); it writes sentencepiece-style BPE "
                     "with byte fallback (Gemma, Llama 2, Mistral) and byte-level BPE (Llama 3, Qwen)")


def _tokens(spec: dict[str, Any], vocab_size: int, *, sentencepiece: bool, gemma: bool) -> tuple[list[str], list[int]]:
    """Tokens in id order and their types; ids without a token (up to the embedding's rows) become unused `[PADn]`."""
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in spec["model"]["vocab"].items()}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise ModelError(f"the tokenizer has {max(by_id) + 1} tokens but the model only {vocab_size} embedding rows")
    unk = spec["model"].get("unk_token")
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        if kind == NORMAL and sentencepiece:
            if _BYTE_TOKEN.match(token):
                kind = BYTE
            elif token == unk:
                kind = UNKNOWN
            elif gemma and len(token) > 1 and set(token) == {"\u2581"}:
                # Gemma's sentencepiece model holds runs of spaces as user-defined pieces, spelled as
                # spaces; transformers spells them with U+2581 (its loader reverses this)
                token, kind = " " * len(token), USER_DEFINED
        tokens.append(token)
        types.append(kind)
    return tokens, types


def _scores(types: list[int]) -> list[float]:
    """Sentencepiece's BPE scores: minus each normal piece's rank (the merge order), 0 for bytes, -1000 for the rest."""
    scores, rank = [], 0
    for kind in types:
        if kind == NORMAL:
            scores.append(-float(rank))
            rank += 1
        else:
            scores.append(0.0 if kind == BYTE else -1000.0)
    return scores


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts U+2581 before the text (Llama 2, Mistral) or not (Gemma)."""
    text = json.dumps({k: spec.get(k) for k in ("normalizer", "pre_tokenizer")}, ensure_ascii=False)
    if '"Prepend"' in text:
        return True
    return bool(re.search(r'"prepend_scheme": "(first|always)"', text) or '"add_prefix_space": true' in text)


def _pre(spec: dict[str, Any]) -> str:
    """llama.cpp's name for a byte-level tokenizer's split."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    for part in parts:
        pattern = (part.get("pattern") or {}).get("Regex") if part.get("type") == "Split" else None
        if pattern in _SPLITS:
            return _SPLITS[pattern]
    raise ModelError("qdtool export does not know llama.cpp's name for this tokenizer's pre-tokenizer split "
                     f"({json.dumps(pre)[:200]}); it knows GPT-2's, Llama 3's and Qwen2's")
