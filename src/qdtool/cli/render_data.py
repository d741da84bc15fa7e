"""Rich rendering of a validation report."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qdtool.core.datastats import DatasetStats, Summary
from qdtool.core.validation import FileReport, ValidationReport

_BAR_WIDTH = 24


def render_report(console: Console, report: ValidationReport) -> None:
    for file_report in report.files:
        _render_file(console, file_report)
    if len(report.files) > 1:
        if report.ok:
            verdict = Text("all valid", style="bold green")
        else:
            verdict = Text("failed under --strict" if report.failed_by_strict else "invalid", style="bold red")
        summary = f": {len(report.files)} files, {report.errors} error(s), {report.warnings} warning(s)"
        console.print(Text.assemble(verdict, summary, _strict_hint(report.failed_by_strict)), soft_wrap=True)


def _render_file(console: Console, file_report: FileReport) -> None:
    result = file_report.result
    console.print(Text(f"{result.path}", style="bold"), Text(f"({result.format}, {result.records:,} usable records)", style="dim"))
    for problem in result.problems:
        label = Text("error  ", style="bold red") if problem.severity == "error" else Text("warning", style="yellow")
        console.print(Text.assemble("  ", label, " ", str(problem)), soft_wrap=True)
    if result.not_listed:
        shown = len(result.problems)
        console.print(Text(f"  ... and {result.not_listed:,} more problem(s), counted but not listed (the first {shown:,} are)",
                           style="dim"), soft_wrap=True)
    if result.records:
        console.print(_stats_table(file_report.stats))
    n_err, n_warn = result.error_count, result.warning_count
    if file_report.ok:
        console.print(Text.assemble(("✓ valid", "bold green"), f": {result.records:,} records, {n_warn} warning(s)"))
    elif file_report.failed_by_strict:
        console.print(Text.assemble(("✗ failed under --strict", "bold red"), f": {n_warn} warning(s)", _strict_hint(True)), soft_wrap=True)
    else:
        console.print(Text.assemble(("✗ invalid", "bold red"), f": {n_err} error(s), {n_warn} warning(s)"))
    console.print()


def _strict_hint(shown: bool) -> str:
    return ", counted as errors; fix them, or drop --strict to accept warnings" if shown else ""


def _fmt(summary: Summary | None, digits: int = 0) -> str:
    if summary is None:
        return "-"
    return f"min {summary.min:.0f} · mean {summary.mean:.{max(digits, 1)}f} · p95 {summary.p95:.0f} · max {summary.max:.0f}"


def _stats_table(stats: DatasetStats) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    table.add_row("records", f"{stats.records:,}")
    table.add_row("steps per question", _fmt(stats.steps))
    peak = max(stats.steps_histogram.values(), default=1)
    for steps, count in stats.steps_histogram.items():
        bar = "█" * max(1, round(count / peak * _BAR_WIDTH))
        table.add_row(f"  {steps} step{'s' if steps != 1 else ''}", f"{bar} {count:,}")
    table.add_row("characters / question", _fmt(stats.question_chars))
    table.add_row("characters / step", _fmt(stats.step_chars))
    table.add_row(
        "language mix",
        f"Hangul {stats.hangul_share:.0%} · Latin {stats.latin_share:.0%} of letters; {stats.korean_records:,} Korean questions",
    )
    if stats.tokens is not None:
        tok = stats.tokens
        table.add_row(f"tokens / sample ({tok.template})", f"p50 {tok.p50} · p95 {tok.p95} · p99 {tok.p99} · max {tok.max}")
        table.add_row("  prompt / answer", f"mean {tok.mean_prompt:.1f} / {tok.mean_answer:.1f} (answer + EOS carry the loss)")
        table.add_row("  tokenizer", tok.model)
    return table
