"""The `qdtool` command: commands are registered here by hand (a test checks the set)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from qdtool import __version__
from qdtool.cli import decompose, eval, export, merge, probe_gpu, serve, synth, train, validate_data
from qdtool.cli._common import exit_on_bug


def _flags_take_no_value() -> None:
    """Typer's help shows `<bool>` beside a flag as if it took a value; a flag takes none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_qdtool", False):
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._qdtool = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="qdtool",
    help="Turn an LLM into a question decomposer: check data, train LoRA/QLoRA, merge, decompose, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qdtool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool], typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Turn an LLM into a question decomposer."""


app.command("validate-data", epilog=validate_data.EXAMPLES)(validate_data.validate_data)
app.command("probe-gpu", epilog=probe_gpu.EXAMPLES)(probe_gpu.probe_gpu)
app.command("train", epilog=train.EXAMPLES)(train.train)
app.command("merge", epilog=merge.EXAMPLES)(merge.merge)
app.command("export", epilog=export.EXAMPLES)(export.export)
app.command("decompose", epilog=decompose.EXAMPLES)(decompose.decompose)
app.command("eval", epilog=eval.EXAMPLES)(eval.eval)
app.command("serve", epilog=serve.EXAMPLES)(serve.serve)
app.command("synth", epilog=synth.EXAMPLES)(synth.synth)


def main() -> None:
    """The console script: exit 0 ok, 1 bad data or a failed check, 2 usage, 3 a bug in qdtool."""
    try:
        app()
    except Exception as exc:  # QdtoolError never gets here: each command turns it into its exit code
        exit_on_bug(exc)
