"""`export`: a model (a run, a merged or plain model dir, a hub id, `embedded`) as one GGUF file, verified.

A run is merged first (its RUN/merged, made in fp32 when there is none yet). The file is written
beside its destination under a temp name, read back with transformers' GGUF loader and compared
with the source (`verify`), and only then renamed into place; with `ollama`, a Modelfile follows.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qdtool.core.exporting.quant import OUTTYPES
from qdtool.core.prompts import PromptOptions
from qdtool.core.rundir import RunDir
from qdtool.errors import UsageError

FORMATS = ("gguf",)
LANGUAGES = ("en", "ko")
Progress = Callable[[str], None]


@dataclass
class ExportResult:
    output: str
    modelfile: str | None
    source: str  # the model directory (or spec) the weights came from
    merged: bool  # whether a run was merged first for this export
    architecture: str  # general.architecture
    outtype: str
    size_bytes: int
    tensors: int
    f16_fallback: list[str]  # q8_0 matrices whose rows are not whole 32-value blocks, written f16
    logit_error: float  # max |file - source| on the probe prompts
    rounding_noise: float  # what rounding to the outtype alone does
    file_vs_rounded: float
    tolerance: float
    decodes_equal_source: int
    decodes: int
    write_seconds: float
    verify_seconds: float
    ollama_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Source:
    spec: str  # what load_model takes
    options: PromptOptions
    name: str  # for file names and general.name
    default_dir: Path
    merged: bool = False  # a run's adapter merged by this export (into `spec`, RUN/merged), before the weights load
    base: str = ""  # that run's base model, checked before the merge


def export(model: str, output: str | Path | None = None, *, format: str = "gguf", outtype: str = "f16", ollama: bool = False,
           language: str | None = None, overwrite: bool = False, progress: Progress | None = None) -> ExportResult:
    """Export `model` to GGUF in `outtype`, verified against the source before the file is kept.

    Args:
        language: the instruction language of the Ollama template (en, ko); default: the run's, else en.

    Raises:
        UsageError: a bad format/outtype/language; the output exists without `overwrite`; an unwritable place.
        ModelError: an architecture or tokenizer the export does not support; the file fails verification
            (nothing is kept).
    """
    from qdtool.core.files import ensure_writable_dir, remove_stale_temps

    say = progress or (lambda _m: None)
    _check_choices(format, outtype, language)
    if output is not None and Path(output).suffix != ".gguf":
        raise UsageError(f"--output must name a .gguf file (got {output})")
    source = _resolve(model, say)
    out = Path(output) if output is not None else source.default_dir / f"{source.name}-{outtype}.gguf"
    modelfile = out.with_suffix(".Modelfile") if ollama else None
    _check_output(out, modelfile, overwrite)
    ensure_writable_dir(out.parent)
    remove_stale_temps(out.parent, out.name)
    if source.merged:
        _merge_first(source, say)
    result, tokenizer = _export(source, out, outtype, say)
    if modelfile is not None:
        result.modelfile, result.ollama_name = str(modelfile), _write_modelfile(source, tokenizer, out, modelfile, language)
    return result


def _check_choices(format: str, outtype: str, language: str | None) -> None:
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {format})")
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype must be one of {', '.join(OUTTYPES)} (got {outtype})")
    if language is not None and language not in LANGUAGES:
        raise UsageError(f"--language must be one of {', '.join(LANGUAGES)} (got {language})")


def _check_output(out: Path, modelfile: Path | None, overwrite: bool) -> None:
    for path in (out, modelfile):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"{path} is a directory; --output names the .gguf file to write")
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it, or --output another file")


def _resolve(spec: str, say: Progress) -> _Source:
    """What to export: a run's merged model (`merged`: still to be merged, by `_merge_first`), or the spec itself."""
    from qdtool.config import load_train_config
    from qdtool.core.merging import MARKER
    from qdtool.core.modeling import check_available

    path = Path(spec)
    run = RunDir(path)
    holder = RunDir.holding_adapter(path)
    if holder is not None:
        raise UsageError(f"{path} is the adapter of a run; pass the run directory instead: qdtool export {holder}")
    if run.is_run() and not (path / "config.json").is_file():
        config = load_train_config(run.config)
        where = run.path / "gguf"
        if config.method == "full" and run.has_model():
            return _Source(str(run.model), config.prompt_options(), run.path.name, where)
        if (run.merged / MARKER).is_file():
            say(f"exporting the merged model in {run.merged}")
            return _Source(str(run.merged), config.prompt_options(), run.path.name, where)
        return _Source(str(run.merged), config.prompt_options(), run.path.name, where, merged=True, base=config.model)
    check_available(spec, say)
    options = load_train_config(run.config).prompt_options() if run.is_run() else PromptOptions()
    if run.is_run() and RunDir(path.parent).is_run():  # RUN/merged: the file goes beside the run's other exports
        return _Source(spec, options, path.parent.name, path.parent / "gguf")
    name = "gemma-3-270m" if spec.strip() == "embedded" else Path(spec.rstrip("/")).name
    return _Source(spec, options, name, Path("."))


def _merge_first(source: _Source, say: Progress) -> None:
    """Merge the run's adapter into `source.spec` (RUN/merged), in fp32; an unsupported base fails before the merge."""
    from qdtool.core.merging import merge

    architecture(source.base, say)
    say(f"merging the adapter first (fp32) into {source.spec}")
    merge(Path(source.spec).parent, None, dtype="fp32", progress=say)


def architecture(spec: str, say: Progress) -> Any:
    """The export's description of a model's architecture, from its config alone (no weights are loaded).

    Raises:
        ModelError: the config cannot be read, or the architecture is not supported (`architecture_of`).
    """
    from transformers import AutoConfig

    from qdtool.core.exporting.architectures import architecture_of
    from qdtool.core.modeling import hub_kwargs, model_location
    from qdtool.errors import ModelError

    try:
        config = AutoConfig.from_pretrained(model_location(spec, say), **hub_kwargs(spec))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of {spec}: {exc}") from exc
    return architecture_of(config)


def _export(source: _Source, out: Path, outtype: str, say: Progress) -> tuple[ExportResult, Any]:
    """Load, check, write under a temp name, verify, rename into place; the result and the source's tokenizer."""
    import torch

    from qdtool.core.exporting.gguf_writer import round_like_file, write_gguf
    from qdtool.core.exporting.verify import check_tokenizer, judge, load_gguf, observe
    from qdtool.core.exporting.vocab import vocab_of
    from qdtool.core.files import write_error
    from qdtool.core.modeling import load_model, load_tokenizer

    arch = architecture(source.spec, say)  # from the config alone: refused before the weights load
    say(f"loading {source.spec} in float32")
    model = load_model(source.spec, dtype=torch.float32, progress=say)
    tokenizer = load_tokenizer(source.spec, progress=say)
    vocab = vocab_of(tokenizer, model.get_input_embeddings().weight.shape[0], gemma=arch.gguf == "gemma3")
    say("checking: the model's logits and greedy decompositions on the probe questions")
    reference = observe(model, tokenizer, source.options)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}.gguf"
    started = time.perf_counter()
    try:
        say(f"writing {outtype} GGUF ({arch.gguf})")
        planned = write_gguf(tmp, model, arch, vocab, outtype, source.name, add_bos=_adds_bos(tokenizer, source.options))
        written = time.perf_counter()
        say(f"checking: the model with its weights rounded to {outtype}, as the file stores them")
        round_like_file(model, planned, arch)
        rounded = observe(model, tokenizer, source.options)
        del model
        gc.collect()
        say("checking: the file as transformers reads it back")
        exported_model, exported_tokenizer = load_gguf(tmp)
        check_tokenizer(tokenizer, exported_tokenizer, source.options)
        verdict = judge(reference, rounded, observe(exported_model, tokenizer, source.options), outtype)
        os.replace(tmp, out)
    except OSError as exc:
        raise write_error(exc, out) from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(
        str(out), None, source.spec, source.merged, arch.gguf, outtype, out.stat().st_size, len(planned),
        [p.hf_name for p in planned if p.kind != outtype and len(p.shape) > 1], verdict.logit_error, verdict.rounding_noise,
        verdict.file_vs_rounded, verdict.tolerance, verdict.decodes_equal_source, verdict.decodes,
        round(written - started, 2), round(time.perf_counter() - written, 2)), tokenizer


def _adds_bos(tokenizer: Any, options: PromptOptions) -> bool:
    """Whether training's prompts start with BOS (written by the chat template or added by the tokenizer)."""
    from qdtool.core.exporting.verify import PROBES
    from qdtool.core.prompts import encode_prompt

    bos = tokenizer.bos_token_id
    return bos is not None and encode_prompt(tokenizer, PROBES[0], options)[:1] == [bos]


def _write_modelfile(source: _Source, tokenizer: Any, out: Path, path: Path, language: str | None) -> str:
    """Write the Modelfile beside the GGUF; returns the model name it suggests for `ollama create`."""
    import re

    from qdtool.core.exporting.ollama import modelfile, prompt_template, stop_markers
    from qdtool.core.files import write_text_atomic

    chosen = language or (source.options.language if source.options.language != "auto" else "en")
    name = re.sub(r"[^a-z0-9._-]+", "-", source.name.lower()).strip("-.") or "decomposer"
    template = prompt_template(tokenizer, source.options, chosen)
    write_text_atomic(path, modelfile(out.name, template, stop_markers(tokenizer), name, source.spec))
    return name
