"""synth's settings, checked once before any file is opened or any teacher asked."""

from __future__ import annotations

from dataclasses import dataclass, field

from qdtool.core.synth.remote import is_url
from qdtool.errors import UsageError


@dataclass(frozen=True)
class SynthSettings:
    """How `synth` asks its teacher and which answers it keeps."""

    teacher: str  # an OpenAI-compatible base URL (http[s]://...), or a local model spec (run dir, merged dir, hub id, embedded)
    teacher_model: str | None = None  # model name sent to a URL teacher; None: the server's only model
    api_key: str | None = field(default=None, repr=False)  # for a URL teacher; never printed (repr=False) nor recorded
    shots: int = 3  # demonstrations in each prompt
    samples: int = 5  # candidates per question
    temperature: float = 0.7  # sampling temperature (0: greedy; then only one sample makes sense)
    top_p: float = 1.0
    # Sampling seed (None: not seeded). A local teacher seeds torch before each group of questions that
    # share demonstrations; a URL teacher gets `seed` in each request, drawn from this, the prompt and the
    # sample, for servers that honour it.
    seed: int | None = None
    max_new_tokens: int = 256  # tokens per candidate at most
    max_steps: int = 8  # sub-questions per candidate at most; a longer candidate is not valid
    min_agreement: float = 0.0  # drop a question whose chosen candidate's agreement (mean SARI, 0..1) is lower
    workers: int = 4  # URL teacher: requests in flight at once
    timeout: float = 60.0  # URL teacher: seconds without a reply before a request is retried
    retries: int = 3  # URL teacher: retries per request after the first attempt (429, 5xx, timeouts)
    backoff_s: float = 0.5  # URL teacher: first retry's wait (doubled each time, with jitter) unless Retry-After says
    retry_dropped: bool = False  # ask the questions of FILE.dropped.jsonl again
    limit: int | None = None  # ask at most this many new questions
    device: str = "auto"  # local teacher: auto, cpu or cuda
    batch_size: int = 8  # local teacher: questions per generate() call
    trust_remote_code: bool = False  # local teacher: run the model repo's own code

    @property
    def remote(self) -> bool:
        return is_url(self.teacher)

    def problems(self) -> list[str]:
        """Every invalid value or combination, each naming its option."""
        found = []
        for name, value, low in (("--samples", self.samples, 1), ("--shots", self.shots, 0), ("--workers", self.workers, 1),
                                 ("--retries", self.retries, 0), ("--max-new-tokens", self.max_new_tokens, 1),
                                 ("--max-steps", self.max_steps, 1), ("--batch-size", self.batch_size, 1)):
            if value < low:
                found.append(f"{name} must be at least {low} (got {value})")
        if self.limit is not None and self.limit < 1:
            found.append(f"--limit must be at least 1 (got {self.limit})")
        if self.temperature < 0:
            found.append(f"--temperature must be 0 or more (got {self.temperature:g})")
        if not 0 < self.top_p <= 1:
            found.append(f"--top-p must be in (0, 1] (got {self.top_p:g})")
        if self.timeout <= 0:
            found.append(f"--timeout must be more than 0 seconds (got {self.timeout:g})")
        if not 0 <= self.min_agreement <= 1:
            found.append(f"--min-agreement is a mean SARI, between 0 and 1 (got {self.min_agreement:g})")
        if self.samples > 1 and self.temperature == 0:
            found.append(f"--samples {self.samples} needs sampling: at --temperature 0 every candidate is the same; "
                         "add --temperature 0.7 (for example), or use --samples 1")
        if self.samples == 1 and self.min_agreement > 0:
            found.append("--min-agreement needs --samples 2 or more: one candidate has nothing to agree with")
        if not self.remote:
            found += [f"{flag} is for a URL teacher (--teacher http://...), not a local model" for flag, given in
                      (("--teacher-model", self.teacher_model), ("--api-key-env", self.api_key)) if given]
        if not self.teacher.strip():
            found.append("--teacher is empty: pass a base URL (http://host:port/v1) or a model (a run dir, 'embedded', ...)")
        return found

    def check(self) -> None:
        """Raises UsageError listing every problem (see `problems`)."""
        found = self.problems()
        if found:
            raise UsageError("; ".join(found))
