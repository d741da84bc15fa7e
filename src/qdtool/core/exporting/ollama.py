"""An Ollama Modelfile whose TEMPLATE is the prompt training used, and whose stops are the training EOS / end-of-turn.

The template is cut out of `render_prompt` itself: the prompt of a placeholder question is rendered
(plain template or the tokenizer's chat template, with the run's instruction) and the placeholder
becomes `{{ .Prompt }}`. A chat template's leading BOS text is left out: Ollama adds BOS from the
GGUF's tokenizer.ggml.add_bos_token, as training's tokenizer did, and a second one would differ
from training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from qdtool.core.prompts import PromptOptions, render_prompt, uses_chat_template
from qdtool.errors import ModelError

_PLACEHOLDER = "QDTOOL_QUESTION_PLACEHOLDER"
QUESTION = "{{ .Prompt }}"
NUM_PREDICT = 256  # decompose's default --max-new-tokens


@dataclass(frozen=True)
class PromptTemplate:
    """render_prompt(q) == bos_text + prefix + q.strip() + suffix, for the options' instruction language."""

    prefix: str
    suffix: str
    bos_text: str  # "" when the template does not write BOS into the text
    language: str

    def go_template(self) -> str:
        return _escape(self.prefix) + QUESTION + _escape(self.suffix)


def prompt_template(tokenizer: Any, options: PromptOptions, language: str) -> PromptTemplate:
    """The prompt around the question, with the default instruction in `language` unless the run set its own.

    An Ollama template cannot tell the question's language, so the instruction is fixed here.
    """
    fixed = replace(options, language=language)
    text = render_prompt(_PLACEHOLDER, tokenizer, fixed)
    if text.count(_PLACEHOLDER) != 1:
        raise ModelError("the chat template does not put the question into the prompt once, as written; "
                         "an Ollama template cannot be made from it (export without --ollama)")
    prefix, suffix = text.split(_PLACEHOLDER)
    bos = getattr(tokenizer, "bos_token", None) or ""
    bos_text = bos if bos and uses_chat_template(tokenizer, options.template) and prefix.startswith(bos) else ""
    return PromptTemplate(prefix[len(bos_text):], suffix, bos_text, language)


def _escape(text: str) -> str:
    """Literal text in a Go template: only `{{` opens an action."""
    if '"""' in text:
        raise ModelError('the prompt contains """, which ends a Modelfile TEMPLATE; an Ollama template cannot be made from it')
    return text.replace("{{", '{{ "{{" }}')


def stop_markers(tokenizer: Any) -> list[str]:
    """The EOS and end-of-turn tokens generation stops at (those of `decompose`)."""
    from qdtool.core.generation import Decomposer

    return list(dict.fromkeys(Decomposer(None, tokenizer).stop_markers))


def modelfile(gguf_name: str, template: PromptTemplate, stops: list[str], name: str, source: str) -> str:
    """The Modelfile text, next to `gguf_name` (FROM is relative to the Modelfile's directory)."""
    from qdtool import __version__

    if any('"' in s for s in stops):
        raise ModelError(f"a stop token contains a quote, which a Modelfile PARAMETER cannot hold: {stops}")
    lines = [
        f"# Ollama Modelfile written by qdtool {__version__} for {gguf_name} (from {source}):",
        f"#   ollama create {name} -f <this file>",
        f'#   ollama run {name} "Was Aristotle alive when the laptop was invented?"',
        f"# TEMPLATE is the prompt the model was trained on, with the instruction in '{template.language}'; "
        "Ollama adds BOS (the GGUF's add_bos_token).",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template.go_template()}"""',
        *[f'PARAMETER stop "{stop}"' for stop in stops],
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {NUM_PREDICT}",
        "",
    ]
    return "\n".join(lines)
