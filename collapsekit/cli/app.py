"""The ``collapsekit`` command: one Typer app with a sub-command per task."""

from __future__ import annotations

from typing import Annotated

import typer

from collapsekit import __version__

app = typer.Typer(
    name="collapsekit",
    help="Measure and overcome dimensional collapse in contrastive self-supervised learning on CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"collapsekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """collapsekit: train MoCo v2 (+ local learning, + ZCA) on CT and diagnose collapse."""


def _register() -> None:
    # Sub-commands register themselves on import; each module is a thin layer over the library.
    import importlib

    for mod in ("data", "diagnose", "train", "evaluate", "ablate", "export"):
        try:
            importlib.import_module(f"collapsekit.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"collapsekit.cli.{mod}":
                raise


_register()


def main() -> None:
    """Console-script entry point."""
    app()
