"""`decompose`: load a decomposer (run dir, merged dir, hub id, embedded) and generate, batched.

Prompts come from the one renderer used in training, with the prompt settings the run was trained
with (its run_config.yaml). Questions are sorted by length (within windows of a few batches) and
generated in left-padded batches; results come back in input order as soon as they are done, so a
caller can write each one at once. Every output is parsed, and a malformed one becomes
`parse_ok: false` with the raw text kept. Empty questions and prompts over the limit are refused
before anything is generated.

A row stops early at its step cap (by default the run's longest training decomposition) or, with
`stop_at_repeat`, at a step that repeats an earlier one, its batch-mates going on; the parsed steps are
cut the same way. With `consensus`, each question samples N decompositions and returns the one the
others agree with most (core/consensus.py); `seed` makes sampling repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdtool.core.hardware import Device, select_device
from qdtool.core.prompts import ParsedOutput, PromptOptions, cut_steps, encode_prompt, first_repeat, parse_sub_questions, render_prompt
from qdtool.core.rundir import RunDir
from qdtool.errors import DataError, UsageError

Progress = Callable[[int, int], None]  # (done, total)
# End-of-turn markers of common chat templates: generation stops there and parsing cuts there.
_TURN_ENDS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_return_sequences: int = 1
    batch_size: int = 16
    max_input_tokens: int = 1024  # prompt tokens per question at most; longer ones are refused, not generated
    # Steps per output at most (generation stops there; 0: no cap); None: the run's longest training
    # decomposition (run_summary.json, qdtool_merge.json), else DEFAULT_MAX_SUB_QUESTIONS.
    max_sub_questions: int | None = None
    # A step equal to an earlier one (normalised) ends the output, the repeat dropped. Off: on val it
    # cost SARI (-0.0026, 95% CI -0.0043 to -0.0012; docs/results.md, bench/decoding_guards.py).
    stop_at_repeat: bool = False
    no_repeat_ngram_size: int = 0  # tokens; n > 0: no n-gram twice in the answer (the prompt does not count); 0: off
    repetition_penalty: float = 1.0  # > 1: tokens already in the answer get less likely (the prompt does not count); 1.0: off
    # With num_return_sequences > 1: return the samples' consensus (core/consensus.py: the valid sample
    # with the highest mean SARI against the other valid ones) instead of the first sample.
    consensus: bool = False
    seed: int | None = None  # sampling: torch's seed before the first batch (None: not seeded)


# The step cap of a model without a record of its training data (a base model, an older run):
# above the longest decomposition of the bundled data (5 steps), below a runaway.
DEFAULT_MAX_SUB_QUESTIONS = 8


@dataclass
class Decomposer:
    """A model + tokenizer ready to decompose, with the prompt settings it was trained with."""

    model: Any
    tokenizer: Any
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    source: str = ""
    longest_trained: int | None = None  # steps of the run's longest training decomposition, where it was recorded

    def step_cap(self, settings: GenerationSettings) -> int:
        """Steps per output at most (0: no cap): the settings', else the run's longest training decomposition, else the default."""
        if settings.max_sub_questions is not None:
            return settings.max_sub_questions
        return self.longest_trained or DEFAULT_MAX_SUB_QUESTIONS

    @property
    def stop_markers(self) -> list[str]:
        """EOS and the end-of-turn tokens this tokenizer has as special tokens (`</s>` can be
        plain text in a vocabulary, e.g. Gemma's, and must not stop anything there)."""
        special = set(self.tokenizer.all_special_tokens) | {
            t for t, i in self.tokenizer.get_added_vocab().items() if t in _TURN_ENDS
        }
        markers = [m for m in _TURN_ENDS if m in special]
        return [self.tokenizer.eos_token, *markers] if self.tokenizer.eos_token else markers

    def prompt(self, question: str) -> str:
        return render_prompt(question, self.tokenizer, self.prompt_options)


def load_decomposer(spec: str | None, *, device: str = "auto", trust_remote_code: bool = False, progress=None) -> Decomposer:
    """Resolve a model spec for inference.

    A run dir (run_config.yaml + adapter/) loads its base model with the adapter on top (in 4-bit
    on a GPU when it was trained so); a full fine-tuning run's model/, a merged dir or any other spec
    loads as is.

    Raises:
        UsageError: no spec and no run under runs/; the spec is a path that does not exist; `device`
            is not auto, cpu or cuda, or is cuda where no GPU is visible.
        ModelError: the spec cannot be loaded (a hub id that is neither cached nor reachable fails before torch loads).
    """
    from qdtool.config import load_train_config
    from qdtool.core.modeling import check_available

    if spec is None:
        found = RunDir.latest()
        if found is None:
            raise UsageError("no model given and no run in runs/: pass --model RUN_DIR, a merged model dir, a hub id, or 'embedded'")
        spec = str(found)
    run = RunDir(spec)
    full = run.is_run() and run.has_model()  # a full fine-tuning run: its model/ is the whole model
    config = load_train_config(run.config) if run.is_run() and (run.adapter.is_dir() or full) else None
    # Before torch is imported: a mistyped path or an unreachable hub id fails in a second or two.
    check_available(str(run.model) if full else config.model if config is not None else spec, progress)
    target = select_device(device=device)
    # Only this command's own flag runs a model repo's code: a run dir's run_config.yaml may come
    # from anyone, so its trust_remote_code is never read (load_train_config drops it too).
    as_run = config is not None
    if full:
        model, tokenizer = _load_model(str(run.model), target, trust_remote_code, progress)
    elif as_run:
        model, tokenizer = _load_run(run, config, target, trust_remote_code, progress)
    else:
        model, tokenizer = _load_model(spec, target, trust_remote_code, progress)
        config = load_train_config(run.config) if run.is_run() else None  # a merged dir keeps its run's
    model.eval()
    _contiguous_head_input(model)
    tokenizer.padding_side = "left"  # generation continues on the right
    prompt_options = config.prompt_options() if config is not None else PromptOptions()
    return Decomposer(model, tokenizer, prompt_options, spec, _longest_trained(run, as_run))


def _longest_trained(run: RunDir, as_run: bool) -> int | None:
    """Steps of the longest training decomposition, as a run's summary (or a merge's marker) recorded it; None without a record."""
    from qdtool.core.files import read_json
    from qdtool.core.merging import MARKER

    record = read_json(run.summary if as_run else run.path / MARKER, default=None)
    value = record.get("longest_decomposition") if isinstance(record, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _load_run(run: RunDir, config: Any, target: Device, trust_remote_code: bool, progress) -> tuple[Any, Any]:
    """A run's base model with its adapter on top, and the tokenizer saved with the adapter."""
    from peft import PeftModel

    from qdtool.core.modeling import load_model, load_tokenizer, quantization_config, refuse_pickle_weights

    refuse_pickle_weights(run.adapter, adapter=True)
    four_bit = target.device == "cuda" and config.quantization == "4bit"
    quantization = quantization_config("4bit", target.dtype, double_quant=config.double_quant) if four_bit else None
    base = load_model(config.model, dtype=target.dtype, device_map=_device_map(target), quantization_config=quantization,
                      trust_remote_code=trust_remote_code, progress=progress)
    model = PeftModel.from_pretrained(base, str(run.adapter))
    if quantization is None and target.precision == "fp32":
        # Fold the adapter into fp32 weights in memory: the same function up to float rounding,
        # without per-layer LoRA matmuls at every token. In 16 bits merging rounds W + BA and
        # shifts logits (see core/merging.py), so there the adapter stays separate.
        model = model.merge_and_unload()
    return model, load_tokenizer(str(run.adapter))


def _load_model(spec: str, target: Device, trust_remote_code: bool, progress) -> tuple[Any, Any]:
    """A model as it is (a merged dir, a hub id, embedded), and its tokenizer."""
    from qdtool.core.modeling import load_model, load_tokenizer

    if Path(spec).is_dir():
        _check_model_dir(Path(spec))
    model = load_model(spec, dtype=target.dtype, device_map=_device_map(target), trust_remote_code=trust_remote_code, progress=progress)
    return model, load_tokenizer(spec, trust_remote_code=trust_remote_code, progress=progress)


def _device_map(target: Device) -> dict[str, int] | None:
    return {"": target.index} if target.device == "cuda" else None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _check_model_dir(path: Path) -> None:
    """Refuse a half-written model dir (an interrupted merge) before it loads and answers garbage."""
    from qdtool.core.merging import MARKER
    from qdtool.errors import ModelError

    if not (path / "config.json").is_file():
        return  # resolve_model says what this directory is instead
    again = "run `qdtool merge RUN_DIR --overwrite` again, or pass the run directory itself"
    if RunDir(path).is_run() and not (path / MARKER).is_file():
        raise ModelError(f"{path} is an incomplete merge output (no {MARKER}, which merge writes last): {again}")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{path} has model weights but no tokenizer ({', '.join(_TOKENIZER_FILES)}): an incomplete model "
                         f"directory, for example from an interrupted merge; {again}")


def _contiguous_head_input(model: Any) -> None:
    """Give the LM head a contiguous input.

    In the first step of `generate` transformers runs the head on `hidden[:, -1:, :]`, a strided
    view. With frozen weights (no autograd), torch's matmul sends a strided 3-D input to a batched
    matmul that copies the weight once per row: on CPU in bf16, with Gemma's 262k x 640 head and 16
    prompts, 9.7 s instead of 17 ms (bench/head_strided.py). A copy of the few hidden rows avoids it.
    """
    def contiguous(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if args and hasattr(args[0], "contiguous"):
            return (args[0].contiguous(), *args[1:])
        return None  # called with keywords only: left as it is

    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(contiguous)


@dataclass
class Decomposition:
    question: str
    sub_questions: list[str]
    raw: str
    parse_ok: bool
    extra: dict[str, Any] = field(default_factory=dict)  # input fields kept (id, ...)
    samples: list[dict[str, Any]] = field(default_factory=list)  # with num_return_sequences > 1
    consensus: dict[str, Any] | None = None  # with GenerationSettings.consensus: which sample was chosen (1-based), its agreement

    def to_dict(self) -> dict[str, Any]:
        row = {**self.extra, "question": self.question, "sub_questions": self.sub_questions, "raw": self.raw, "parse_ok": self.parse_ok}
        if self.samples:
            row["samples"] = self.samples
        if self.consensus is not None:
            row["consensus"] = self.consensus
        return row


def read_questions(path: str | Path, text: str | bytes | None = None, *, question_field: str | None = None) -> list[dict[str, Any]]:
    """Questions from JSONL / a JSON array of records (each with "question"), plain lines, or a table
    or dataset with a question column (CSV, TSV, Parquet, a save_to_disk directory, hf://datasets/NAME[:SPLIT]).

    `path` "-" reads `text` (stdin's content; bytes, so that undecodable input gets a located
    message). Fields other than the question are kept. `question_field` names the field (column)
    that holds the question (default "question"); each row returned has it as "question".

    Raises:
        UsageError: the file is missing, a directory holding no saved dataset, or not a regular file.
        DataError: the input is empty, not UTF-8 or not JSON, a table has no such column, or a record
            has no question; every such line is listed.
    """
    from qdtool.core.problems import Problem, problems_error
    from qdtool.core.sources import open_rows

    field = question_field or "question"
    source = open_rows(path, text, what="questions", needs=(field,), plain_lines=True)
    problems = list(source.problems)
    questions = []
    for number, row in enumerate(source.rows, start=1):
        if row.problem is not None:
            problems.append(row.problem)
            continue
        if source.format == "lines":
            questions.append({"question": row.value})
            continue
        value = row.value
        question = value.get(field) if isinstance(value, dict) else None
        if not isinstance(question, str) or not question.strip():
            problems.append(Problem(row.location, f'record {number} has no "{field}" string', line=row.line))
        elif field == "question":
            questions.append(value)
        else:  # the mapped column becomes "question"; a column already called so would be overwritten by it
            questions.append({**{k: v for k, v in value.items() if k not in (field, "question")}, "question": question})
    if problems:
        raise problems_error("<stdin>" if str(path) == "-" else str(path), problems)
    return questions


def _streamer(tokenizer: Any, on_text: Callable[[str], None]):
    from transformers.generation.streamers import BaseStreamer

    class _Stream(BaseStreamer):
        def __init__(self) -> None:
            self.ids: list[int] = []
            self.shown = 0
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # the first call carries the prompt
                self.prompt_seen = True
                return
            self.ids.extend(value.reshape(-1).tolist())
            text = tokenizer.decode(self.ids, skip_special_tokens=True)
            if len(text) > self.shown and not text.endswith("\ufffd"):
                on_text(text[self.shown :])
                self.shown = len(text)

        def end(self) -> None:
            pass

    return _Stream()


def decompose(
    decomposer: Decomposer,
    rows: Sequence[dict[str, Any]],
    settings: GenerationSettings = GenerationSettings(),
    *,
    progress: Progress | None = None,
    on_text: Callable[[str], None] | None = None,
    source: str | None = None,
) -> list[Decomposition]:
    """Decompose every row's "question", in input order (see `decompose_stream`)."""
    return list(decompose_stream(decomposer, rows, settings, progress=progress, on_text=on_text, source=source))


def decompose_stream(
    decomposer: Decomposer,
    rows: Sequence[dict[str, Any]],
    settings: GenerationSettings = GenerationSettings(),
    *,
    progress: Progress | None = None,
    on_text: Callable[[str], None] | None = None,
    source: str | None = None,
    numbers: Sequence[int] | None = None,
) -> Iterator[Decomposition]:
    """Yield every row's decomposition in input order, each as soon as it and the rows before it are done.

    Rows are taken in windows of `_WINDOW_BATCHES` batches; inside a window, batches are formed by
    prompt length (little padding), and finished rows are yielded in input order. So a caller that
    writes each result as it comes keeps everything finished when it is stopped.

    Args:
        on_text: stream the generated text of a single question as it comes (batch of one).
        source: where the rows come from (a file name), for error messages.
        numbers: each row's record number in `source` (default 1, 2, ...), for error messages.

    Raises:
        DataError: a question is empty, or its prompt is over the limit (`prompt_limit`); every such
            row is listed, before anything is generated.
    """
    tokenizer, model = decomposer.tokenizer, decomposer.model
    encoded = [_encode(decomposer, row) for row in rows]
    _check_lengths(rows, encoded, prompt_limit(model, settings), settings, source, numbers)
    gen_kwargs = _generation_kwargs(decomposer, settings)
    if settings.temperature > 0 and settings.seed is not None:
        import torch

        torch.manual_seed(settings.seed)
    window = settings.batch_size * _WINDOW_BATCHES
    done = 0
    for first in range(0, len(rows), window):
        indices = range(first, min(first + window, len(rows)))
        order = sorted(indices, key=lambda i: len(encoded[i]))
        finished: dict[int, Decomposition] = {}
        emitted = first
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            streamer = _streamer(tokenizer, on_text) if on_text is not None and len(rows) == 1 else None
            finished.update(_generate_batch(decomposer, rows, encoded, batch, settings, gen_kwargs, streamer))
            done += len(batch)
            if progress:
                progress(done, len(rows))
            while emitted in finished:
                yield finished.pop(emitted)
                emitted += 1


# Rows per window = batch_size x this: enough to sort by length, few enough to write results often.
_WINDOW_BATCHES = 4


def _encode(decomposer: Decomposer, row: dict[str, Any]) -> list[int] | None:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        return None
    return encode_prompt(decomposer.tokenizer, question, decomposer.prompt_options)  # as in training


def prompt_limit(model: Any, settings: GenerationSettings) -> tuple[int, str]:
    """The most prompt tokens a question may take, and why: --max-input-tokens, or the model's
    context less the tokens to generate (whichever is smaller)."""
    limit, why = settings.max_input_tokens, f"--max-input-tokens {settings.max_input_tokens}"
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(text_config, "max_position_embeddings", None)
    if isinstance(context, int) and context - settings.max_new_tokens < limit:
        limit = context - settings.max_new_tokens
        why = f"the model's context of {context:,} tokens less --max-new-tokens {settings.max_new_tokens}"
    return limit, why


def _check_lengths(rows: Sequence[dict[str, Any]], encoded: Sequence[list[int] | None], limit: tuple[int, str],
                   settings: GenerationSettings, source: str | None, numbers: Sequence[int] | None) -> None:
    tokens, why = limit
    if tokens < 1:
        raise UsageError(f"--max-new-tokens {settings.max_new_tokens} leaves no room for a prompt ({why}); lower --max-new-tokens")
    problems = []
    for index, (row, ids) in enumerate(zip(rows, encoded, strict=True)):  # encoded: one per row
        place = f"record {numbers[index] if numbers else index + 1}" + (f" (id {row['id']})" if "id" in row else "")
        if ids is None:
            problems.append(f"{place}: the question is empty")
        elif len(ids) > tokens:
            problems.append(f"{place}: the prompt is {len(ids):,} tokens")
    if not problems:
        return
    prefix = f"{source}: " if source else ""
    if len(rows) == 1 and source is None:  # one question from the command line: no record numbers
        problems = [p.split(": ", 1)[1] for p in problems]
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    raise DataError(
        f"{prefix}{shown}. A prompt may take at most {tokens:,} tokens ({why}); nothing was generated. "
        "Shorten or remove these questions, or raise --max-input-tokens within the model's context."
    )


def _generation_kwargs(decomposer: Decomposer, settings: GenerationSettings) -> dict[str, Any]:
    tokenizer, model = decomposer.tokenizer, decomposer.model
    eos_ids = {tokenizer.convert_tokens_to_ids(m) for m in decomposer.stop_markers}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)  # e.g. Llama 3's extra end ids
    eos_ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "num_return_sequences": settings.num_return_sequences,
        "eos_token_id": sorted(i for i in eos_ids if isinstance(i, int) and i >= 0) or None,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if settings.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return gen_kwargs


def _generate_batch(decomposer: Decomposer, rows: Sequence[dict[str, Any]], encoded: Sequence[Any], batch: list[int],
                    settings: GenerationSettings, gen_kwargs: dict[str, Any], streamer: Any) -> dict[int, Decomposition]:
    """One left-padded generate() call; the parsed result of each row in `batch`, by row index."""
    import torch

    tokenizer, model = decomposer.tokenizer, decomposer.model
    device = next(model.parameters()).device
    width = max(len(encoded[i]) for i in batch)
    pad = gen_kwargs["pad_token_id"]
    input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
    attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
    cap = decomposer.step_cap(settings)
    guards = _guards(decomposer, settings, cap, width)
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=attention, streamer=streamer, **gen_kwargs, **guards)
    texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=False)
    n = settings.num_return_sequences
    results = {}
    for k, index in enumerate(batch):
        parsed = [_parse(t, decomposer, cap, settings.stop_at_repeat) for t in texts[k * n : (k + 1) * n]]
        row = rows[index]
        chosen, consensus = _pick(row["question"], parsed) if settings.consensus and n > 1 else (parsed[0], None)
        samples = [{"sub_questions": p.sub_questions, "raw": p.raw, "parse_ok": p.parse_ok} for p in parsed] if n > 1 else []
        extra = {key: value for key, value in row.items() if key not in ("question", "sub_questions")}
        results[index] = Decomposition(row["question"], chosen.sub_questions, chosen.raw, chosen.parse_ok, extra, samples, consensus)
    return results


def _pick(question: str, parsed: Sequence[ParsedOutput]) -> tuple[ParsedOutput, dict[str, Any]]:
    """The samples' consensus (core/consensus.py's `choose`), and the record of the choice."""
    from qdtool.core.consensus import check_candidate, choose

    choice = choose(question, [check_candidate(question, p.raw, p.sub_questions) for p in parsed])
    agreement = None if choice.agreement is None else round(choice.agreement, 4)
    return parsed[choice.index], {"chosen": choice.index + 1, "agreement": agreement, "valid": choice.valid, "samples": len(parsed)}


def _parse(text: str, decomposer: Decomposer, cap: int, stop_at_repeat: bool) -> ParsedOutput:
    """The steps of one generated text, cut as the guards cut generation (the raw text is kept whole)."""
    parsed = parse_sub_questions(_until_stop(text, decomposer.tokenizer, decomposer.stop_markers))
    return ParsedOutput(cut_steps(parsed.sub_questions, cap, stop_at_repeat), parsed.raw)


def _guards(decomposer: Decomposer, settings: GenerationSettings, cap: int, width: int) -> dict[str, Any]:
    """generate()'s extra arguments for the step cap, stop-at-repeat and the repetition guards ({} when all are off).

    `width` is the padded prompt length: what comes after it in a row is that row's answer.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    guards: dict[str, Any] = {}
    if cap > 0 or settings.stop_at_repeat:
        guards["stopping_criteria"] = StoppingCriteriaList([_step_stop(_StepWatch(decomposer, cap, settings.stop_at_repeat), width)])
    processors = _answer_guards(settings, width)
    if processors:
        guards["logits_processor"] = LogitsProcessorList(processors)
    return guards


class _StepWatch:
    """Whether a row's answer so far is done: it has `cap` complete steps, a complete step repeats an
    earlier one, or a complete line restarts the template (`### ...`: nothing after it is parsed).

    A step is complete once a newline follows it, so the text is parsed again only at tokens that
    hold a newline.
    """

    def __init__(self, decomposer: Decomposer, cap: int, stop_at_repeat: bool) -> None:
        self.tokenizer, self.markers = decomposer.tokenizer, decomposer.stop_markers
        self.cap, self.stop_at_repeat = cap, stop_at_repeat
        self._newline: dict[int, bool] = {}  # token id -> whether its text holds a newline

    def ends_line(self, token: int) -> bool:
        if token not in self._newline:
            self._newline[token] = "\n" in self.tokenizer.decode([token])
        return self._newline[token]

    def done(self, answer: Sequence[int]) -> bool:
        text = self.tokenizer.decode(list(answer), skip_special_tokens=False)
        for marker in self.markers:
            if marker:
                text = text.split(marker, 1)[0]
        complete = text.rpartition("\n")[0]  # the last line may still be growing
        if any(line.lstrip().startswith("###") for line in complete.splitlines()):
            return True
        steps = parse_sub_questions(complete).sub_questions
        return (0 < self.cap <= len(steps)) or (self.stop_at_repeat and first_repeat(steps) is not None)


def _step_stop(watch: _StepWatch, width: int) -> Any:
    """A StoppingCriteria that asks `watch` about each row: generate() pads the rows that are done and continues the others."""
    import torch
    from transformers import StoppingCriteria

    class _StepStop(StoppingCriteria):
        def __init__(self) -> None:
            self.done: list[bool] = []

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if not self.done:
                self.done = [False] * input_ids.shape[0]
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if not self.done[row] and watch.ends_line(token):
                    self.done[row] = watch.done(input_ids[row, width:].tolist())
            return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    return _StepStop()


def _answer_guards(settings: GenerationSettings, width: int) -> list[Any]:
    """No-repeat n-gram and repetition penalty over each row's answer only.

    transformers' own versions count the prompt too, and a sub-question is meant to repeat the
    question's words ("When was the laptop invented?"): there they would ban exactly those.
    """
    import torch
    from transformers import LogitsProcessor

    size, penalty = settings.no_repeat_ngram_size, settings.repetition_penalty

    class _NoRepeatNGram(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for row, ids in enumerate(input_ids[:, width:].tolist()):
                prefix = ids[len(ids) - size + 1:] if size > 1 else []
                banned = [ids[i + size - 1] for i in range(len(ids) - size + 1) if ids[i : i + size - 1] == prefix]
                if banned:  # the tokens that would complete an n-gram the answer already has
                    scores[row, banned] = float("-inf")
            return scores

    class _RepetitionPenalty(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            answer = input_ids[:, width:]
            if answer.shape[1] == 0:
                return scores
            seen = scores.gather(1, answer)  # as transformers does it: positive logits divided, negative multiplied
            return scores.scatter(1, answer, torch.where(seen < 0, seen * penalty, seen / penalty))

    return ([_RepetitionPenalty()] if penalty != 1.0 else []) + ([_NoRepeatNGram()] if size > 0 else [])


def _until_stop(text: str, tokenizer: Any, stop_markers: Sequence[str]) -> str:
    """Generated text without padding, cut at the first stop marker (EOS, end of turn)."""
    if tokenizer.pad_token:
        text = text.replace(tokenizer.pad_token, "")
    for marker in stop_markers:
        if marker:
            text = text.split(marker, 1)[0]
    return text.strip()


__all__ = ["DEFAULT_MAX_SUB_QUESTIONS", "Decomposer", "Decomposition", "GenerationSettings", "decompose", "decompose_stream",
           "load_decomposer", "prompt_limit", "read_questions"]
