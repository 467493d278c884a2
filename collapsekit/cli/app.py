"""The ``collapsekit`` command: one Typer app with a sub-command per task."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from collapsekit import __version__


def _metavar(param: object) -> str:
    """Click-style metavar for an option's value: PATH, INT, FLOAT or TEXT; flags take none."""
    if getattr(param, "is_flag", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and desc.is_path:
        return "PATH"
    annotation = getattr(desc, "annotation", None)
    if annotation is int:
        return "INT"
    return "FLOAT" if annotation is float else "TEXT"


def _tidy(params: list) -> list:
    """Help without type noise: ``--resume`` not ``--resume <bool>``, ``OUT_DIR`` not ``{out_dir}``.

    Typer renders every parameter's annotation (``<bool>``, ``<int range>``, ``{out_dir}``); this
    gives them the conventions of click and argparse instead. Ranges (``[x>=1]``) and defaults stay.
    """
    for param in params:
        if param.metavar is not None:
            continue
        if isinstance(param, TyperArgument):
            name = (param.name or "arg").upper()
            usage = name if param.required else f"[{name}]"
            kind = _metavar(param)
            param.metavar = name
            # Typer wraps the usage name in braces and shows <path> as its type; click writes
            # OUT_DIR and PATH, as users read them.
            setattr(param, "_usage_display_name", lambda usage=usage: usage)  # noqa: B010
            setattr(param, "display_type_rich", lambda ctx, kind=kind: kind)  # noqa: B010
        else:
            param.metavar = _metavar(param)
    return params


class TidyCommand(TyperCommand):
    """A Typer command whose ``--help`` shows click-style metavars (see :func:`_tidy`)."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _tidy(super().get_params(ctx))


class TidyGroup(TyperGroup):
    """A Typer group whose ``--help`` shows click-style metavars (see :func:`_tidy`)."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _tidy(super().get_params(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose groups and commands render tidy help; every sub-app uses it."""

    def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(cls=TidyGroup, **kwargs)

    def command(self, *args, cls=None, **kwargs):  # type: ignore[no-untyped-def, override]
        return super().command(*args, cls=cls or TidyCommand, **kwargs)


app = App(
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
