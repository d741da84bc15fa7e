"""Read an exported GGUF back with transformers and compare it with the model it came from.

Three models answer the same probes: the source (float32), the source with every weight rounded
the way the file stores it (the outtype's own rounding, computed here in numpy/torch), and the file
as transformers' GGUF loader reads it. The file passes when its logits are as far from the
source's as the rounding alone puts them (the merge check's principle: the error is judged against
the precision's own noise, not against a fixed number), when its greedy decompositions are those
of the rounded source (and, for f16/bf16, those of the source itself), and when its tokenizer
encodes the prompts to the same ids.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdtool.core.merging import PROBE_ANSWER, PROBES, probe_batch
from qdtool.core.prompts import PromptOptions, encode_prompt
from qdtool.errors import ModelError

DECODE_TOKENS = 48  # new tokens per greedy decomposition: a few steps, enough to show a different path
SLACK = 1.5  # the file's logit error may be this multiple of the outtype's own rounding error ...
FLOOR = 1e-3  # ... plus this (float32 arithmetic in another order)


@dataclass
class Observation:
    logits: Any  # float32 [answer and prompt positions, vocab]
    decodes: list[str]


@dataclass(frozen=True)
class Verdict:
    logit_error: float  # max |file - source| over the probe positions
    rounding_noise: float  # max |source rounded as the file stores it - source|
    file_vs_rounded: float  # max |file - rounded source|: ~0 when the file holds what was meant
    tolerance: float
    decodes_equal_source: int  # greedy decompositions identical to the source's
    decodes: int

    @property
    def ok(self) -> bool:
        return self.logit_error <= self.tolerance


def observe(model: Any, tokenizer: Any, options: PromptOptions) -> Observation:
    """The model's logits on the probes and its greedy decompositions of them."""
    import torch

    from qdtool.core.generation import Decomposer, GenerationSettings, _contiguous_head_input, decompose

    model.eval()
    batch = probe_batch(tokenizer, options)
    with torch.no_grad():
        logits = model(**batch).logits.float()[batch["attention_mask"].bool()]
    _contiguous_head_input(model)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        settings = GenerationSettings(max_new_tokens=DECODE_TOKENS, batch_size=len(PROBES), max_sub_questions=0, stop_at_repeat=False)
        found = decompose(Decomposer(model, tokenizer, options), [{"question": q} for q in PROBES], settings)
    finally:
        tokenizer.padding_side = padding_side
    return Observation(logits, [d.raw for d in found])


def load_gguf(path: Path) -> tuple[Any, Any]:
    """The model and tokenizer transformers reads from a GGUF file (float32; its progress bars silenced)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(str(path.resolve().parent), gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(path.resolve().parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise ModelError(f"the exported file does not load back in transformers ({type(exc).__name__}: {exc}); nothing was kept") from exc
    return model.eval(), tokenizer


def check_tokenizer(source: Any, exported: Any, options: PromptOptions) -> None:
    """The file's tokenizer encodes every probe prompt and answer to the source's ids.

    Raises:
        ModelError: a probe encodes differently (the message shows where).
    """
    for question in PROBES:
        want, got = encode_prompt(source, question, options), encode_prompt(exported, question, options)
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
            raise ModelError(f"the exported tokenizer encodes the prompt of {question!r} differently from the model's "
                             f"(first at token {at}: {want[at:at + 3]} vs {got[at:at + 3]}); nothing was kept")
    answer = "\n".join(PROBE_ANSWER)
    if source(answer, add_special_tokens=False)["input_ids"] != exported(answer, add_special_tokens=False)["input_ids"]:
        raise ModelError("the exported tokenizer encodes an answer differently from the model's; nothing was kept")


def judge(source: Observation, rounded: Observation, exported: Observation, outtype: str) -> Verdict:
    """Compare the three observations.

    Raises:
        ModelError: the file's logits are further from the source's than the rounding explains; its decompositions
            differ from the rounded source's, or (f16/bf16) from the source's.
    """
    noise = float((rounded.logits - source.logits).abs().max())
    verdict = Verdict(
        logit_error=float((exported.logits - source.logits).abs().max()),
        rounding_noise=noise,
        file_vs_rounded=float((exported.logits - rounded.logits).abs().max()),
        tolerance=SLACK * noise + FLOOR,
        decodes_equal_source=sum(a == b for a, b in zip(exported.decodes, source.decodes, strict=True)),
        decodes=len(source.decodes),
    )
    if not verdict.ok:
        raise ModelError(f"the exported file's logits differ from the model's by {verdict.logit_error:.4g}, where {outtype} "
                         f"rounding alone moves them by {noise:.4g} (tolerance {verdict.tolerance:.4g}): the file does not hold "
                         "the model; nothing was kept")
    for question, want, got in zip(PROBES, rounded.decodes, exported.decodes, strict=True):
        if want != got:
            raise ModelError(f"the exported file decodes {question!r} differently from the model rounded to {outtype} "
                             f"({got[:80]!r} vs {want[:80]!r}): the file does not hold the weights it should; nothing was kept")
    if outtype in ("f16", "bf16") and verdict.decodes_equal_source < verdict.decodes:
        hint = " (export with --outtype f16, which rounds less)" if outtype == "bf16" else ""
        raise ModelError(f"{outtype} rounding changes the model's greedy decompositions ({verdict.decodes_equal_source} of "
                         f"{verdict.decodes} probes unchanged){hint}; nothing was kept")
    return verdict
