"""Pages generated at build time (mkdocs-gen-files), so the code stays their single definition.

- ``reference/glossary.md`` from :data:`collapsekit.glossary.QUANTITIES` (and ``LAYERS``,
  ``LEGACY_KEYS``);
- ``reference/cli.md`` from the Typer app :data:`collapsekit.cli.app.app` (every command's
  ``--help``, rendered by Typer itself);
- ``reference/api/*.md``: one mkdocstrings page per public subpackage;
- ``tutorials/*.ipynb``: the notebooks of ``notebooks/``, rendered (not executed) by mkdocs-jupyter.

The functions take no mkdocs objects, so ``tests/test_docs.py`` calls them directly.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (page, module, what it is): one API page per public subpackage (and the leaves on one page).
API_PAGES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("diagnostics", ("collapsekit.diagnostics",), "(N, D) arrays in, numbers out."),
    ("data", ("collapsekit.data",), "Volumes to 2D slices: phantom, layouts, cache, augmentation."),
    ("models", ("collapsekit.models",), "Backbones, ZCA whitening, heads, MoCo v2 + local branch."),
    (
        "monitoring",
        ("collapsekit.monitoring", "collapsekit.monitoring.lightning"),
        "Collapse monitoring for any training loop.",
    ),
    ("runs", ("collapsekit.runs",), "Checkpoints, run directories, loading any model."),
    ("train", ("collapsekit.train",), "Pretraining: configuration and the loop."),
    (
        "evaluation",
        ("collapsekit.evaluation",),
        "Embedding extraction, reports, probe and fine-tuning.",
    ),
    ("experiments", ("collapsekit.experiments",), "The paper's ablation."),
    ("plotting", ("collapsekit.plotting",), "`plot_*(result, ax=None) -> (fig, ax)`."),
    (
        "leaves",
        (
            "collapsekit.errors",
            "collapsekit.glossary",
            "collapsekit.options",
            "collapsekit.progress",
            "collapsekit.devices",
            "collapsekit.filetypes",
            "collapsekit.outputs",
            "collapsekit.serialization",
        ),
        "The bottom layer: errors, the metric vocabulary, options, progress events, devices, files.",
    ),
)

NOTEBOOKS = ROOT / "notebooks"


def _cell(text: str) -> str:
    """A markdown table cell: no pipes or newlines."""
    return text.replace("|", "\\|").replace("\n", " ")


def glossary_page() -> str:
    """The metrics glossary, one row per :class:`~collapsekit.glossary.Quantity`."""
    from collapsekit.glossary import LAYERS, LEGACY_KEYS, QUANTITIES

    lines = [
        "# Metrics glossary",
        "",
        "One name per quantity: every Python field, JSON key, `metrics.jsonl` key, TensorBoard tag",
        'and plot label uses the **name** below. A layer-qualified key is `"{layer}/{name}"`',
        "(layers: "
        + ", ".join(f"`{x}`" for x in LAYERS)
        + "), e.g. `projector/effective_rank_lambda`.",
        "",
        "This page is generated from `collapsekit.glossary.QUANTITIES` when the site is built: the",
        "code is the single definition.",
        "",
        "| name | label | healthy value |",
        "|---|---|---|",
    ]
    lines += [
        f"| [`{q.name}`](#{q.name}) | {_cell(q.label)} | {_cell(q.healthy) or '—'} |"
        for q in QUANTITIES
    ]
    for q in QUANTITIES:
        lines += [
            "",
            f"## `{q.name}` {{#{q.name}}}",
            "",
            f"**{q.label}** — {q.formula}.",
            "",
            f"- reference: {q.reference}",
        ]
        if q.healthy:
            lines.append(f"- healthy: {q.healthy}")
    lines += [
        "",
        "## Older spellings",
        "",
        "Runs and JSON files written by earlier versions still load: `collapsekit.glossary."
        "canonical_key` maps their keys (`proj_…` → `projector/…`, `dense_…` → `dense/…`).",
        "",
        "| old key | name |",
        "|---|---|",
    ]
    lines += [f"| `{old}` | `{new}` |" for old, new in sorted(LEGACY_KEYS.items())]
    return "\n".join(lines) + "\n"


def _help(args: list[str]) -> str:
    """``collapsekit ARGS --help`` at 80 columns, as plain click text (no rich boxes, no colour).

    Typer renders help with rich panels when rich is installed; for a page, click's plain layout
    reads better and fits the content column, so rich is turned off while rendering (Typer reads
    ``TYPER_USE_RICH`` once at import, into ``typer.core.HAS_RICH``). Without that switch the
    rich layout is used as is.
    """
    from unittest import mock

    import typer.core
    from typer.testing import CliRunner

    from collapsekit.cli.app import app

    env = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    plain = (
        mock.patch.object(typer.core, "HAS_RICH", False)
        if hasattr(typer.core, "HAS_RICH")
        else contextlib.nullcontext()
    )
    with plain, mock.patch.dict(os.environ, env):
        result = CliRunner().invoke(app, [*args, "--help"], env=env, color=False)
    if result.exit_code != 0:
        raise RuntimeError(f"collapsekit {' '.join(args)} --help exited {result.exit_code}")
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _commands() -> list[list[str]]:
    """Every command path of the app, sub-commands of groups included, in the app's order."""
    import typer.main

    from collapsekit.cli.app import app

    def walk(cmd: object, path: list[str]) -> list[list[str]]:
        subs = getattr(cmd, "commands", None)
        if not subs:
            return [path]
        out = [path] if path else []
        for name, sub in subs.items():
            out += walk(sub, [*path, name])
        return out

    return walk(typer.main.get_command(app), [])


def cli_page() -> str:
    """The CLI reference: every command's ``--help``, generated from the Typer app."""
    lines = [
        "# CLI reference",
        "",
        "Generated from the Typer app (`collapsekit.cli.app.app`) when the site is built: each",
        "block is what `collapsekit COMMAND --help` prints (plain layout). For a one-table overview see",
        "[Commands at a glance](commands.md).",
        "",
        "## `collapsekit`",
        "",
        "```text",
        _help([]),
        "```",
        "",
    ]
    for path in _commands():
        lines += [f"## `collapsekit {' '.join(path)}`", "", "```text", _help(path), "```", ""]
    return "\n".join(lines)


def api_page(title: str, modules: tuple[str, ...], blurb: str) -> str:
    """One API page: a mkdocstrings block per module (its ``__all__``, from the docstrings)."""
    lines = [f"# API: {title}", "", blurb, ""]
    for mod in modules:
        lines += [f"::: {mod}", ""]
    return "\n".join(lines)


def write_all(open_file) -> None:  # noqa: ANN001 - mkdocs_gen_files.open or a test's stand-in
    """Write every generated page through ``open_file(path, mode)``."""
    with open_file("reference/glossary.md", "w") as f:
        f.write(glossary_page())
    with open_file("reference/cli.md", "w") as f:
        f.write(cli_page())
    for page, modules, blurb in API_PAGES:
        with open_file(f"reference/api/{page}.md", "w") as f:
            f.write(api_page(page if page != "leaves" else "leaf modules", modules, blurb))
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        with open_file(f"tutorials/{nb.name}", "w") as f:
            f.write(nb.read_text(encoding="utf-8"))


if __name__ in {"__main__", "<run_path>"}:  # run by mkdocs-gen-files (runpy.run_path)
    import sys

    import mkdocs_gen_files

    sys.path.insert(0, str(ROOT))
    write_all(mkdocs_gen_files.open)
