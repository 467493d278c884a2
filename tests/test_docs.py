"""The documentation: README as a front page, its links, CI's test command, the code blocks of the
README and the guides (executed), and the pages generated from the code.

A Python block that cannot run in seconds on any machine (it needs a trained run, a file the
reader brings) is preceded by ``<!-- docs-test: skip REASON -->``; every other block runs, the
blocks of one page in order and in one namespace (a block may continue the one above it).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")

#: Pages whose Python blocks are executed (with the README): the guides and getting started.
PAGES = [
    README,
    ROOT / "docs" / "getting-started.md",
    *sorted((ROOT / "docs" / "guides").glob("*.md")),
]


def python_blocks(text: str) -> list[tuple[str, str | None]]:
    """``(code, skip_reason)`` of every ```python block; the reason is None for a block to run."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip().splitlines()
        skip = SKIP.search(before[-1]) if before else None
        blocks.append((m.group(2), skip.group(1).strip() if skip else None))
    return blocks


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (mkdocs' default slugify)."""
    text = re.sub(r"[`*_]|\{#.*?\}", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(md: Path) -> set[str]:
    """The heading anchors of a markdown file (outside code blocks; ``{#id}`` attributes too)."""
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    out = set()
    for line in text.splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            out.add(slug(m.group(1)))
            out.update(re.findall(r"\{#([\w-]+)\}", line))
    return out


def relative_links(md: Path) -> list[str]:
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


# --- helpers checked on known inputs (a checker that cannot fail checks nothing) ---


def test_python_blocks_finds_code_and_skip_markers():
    text = (
        "x\n\n```python\na = 1\n```\n\n<!-- docs-test: skip needs a run -->\n```python\nb = 2\n```\n"
        "```bash\nls\n```\n"
    )
    assert python_blocks(text) == [("a = 1\n", None), ("b = 2\n", "needs a run")]


def test_slug_matches_mkdocs_anchors():
    assert slug("The demo regime, where collapse shows") == "the-demo-regime-where-collapse-shows"
    assert slug("`collapsekit train`") == "collapsekit-train"
    assert slug("Take the backbone elsewhere: `collapsekit export`") == (
        "take-the-backbone-elsewhere-collapsekit-export"
    )


# --- the README as a front page ---


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the front page keeps ≤ 200"
    headings = [line for line in lines if line.startswith("## ")]
    assert len(headings) == len(set(headings)), f"duplicated sections: {headings}"


@pytest.mark.parametrize(
    "md",
    [README, *sorted((ROOT / "docs").rglob("*.md"))],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_relative_links_resolve(md: Path):
    """Every relative link of the README and of the pages points at a file (and heading) that
    exists; pages generated at build time are checked by ``mkdocs build --strict`` instead."""
    if "_drafts" in md.parts:
        pytest.skip("drafts are not part of the site")
    generated = {"reference/glossary.md", "reference/cli.md"}
    bad = []
    for target in relative_links(md):
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        rel = (
            dest.relative_to(ROOT / "docs").as_posix() if dest.is_relative_to(ROOT / "docs") else ""
        )
        if rel in generated or rel.startswith(("reference/api/", "tutorials/")):
            continue
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(target)
    assert not bad, f"{md.relative_to(ROOT)}: links that do not resolve: {bad}"


def test_readme_test_command_is_what_ci_runs():
    """``.ci/run`` runs "the README's test command": the same extras and the same pytest line."""
    readme = README.read_text(encoding="utf-8")
    section = readme.split("## Run the whole test suite", 1)[1]
    command = FENCE.search(section).group(2).strip()
    install, pytest_cmd = command.split(" && ")[1], command.split(" && ")[-1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_lines = [line.strip() for line in ci if line.strip() and not line.startswith("#")]
    assert pytest_cmd in ci_lines, (pytest_cmd, ci_lines)
    assert any(install in line for line in ci_lines), (install, ci_lines)
    assert "-n" in shlex.split(pytest_cmd), "the suite runs in parallel (pytest-xdist)"


# --- the code blocks run ---


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    runnable = [code for code, reason in blocks if reason is None]
    if not runnable:
        pytest.skip("no runnable Python block")
    monkeypatch.chdir(tmp_path)  # blocks write files (spectrum.png, logs/): keep them here
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for code in runnable:
        exec(compile(code, str(page), "exec"), namespace)  # noqa: S102 - the documentation's own code


def test_every_skipped_block_says_why():
    for page in PAGES:
        for code, reason in python_blocks(page.read_text(encoding="utf-8")):
            assert reason != "", f"{page.name}: a skipped block without a reason:\n{code}"


# --- pages generated from the code ---


def _gen_pages():
    spec = importlib.util.spec_from_file_location(
        "gen_pages", ROOT / "docs" / "tools" / "gen_pages.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_pages", module)
    spec.loader.exec_module(module)
    return module


def test_glossary_page_has_every_quantity_and_legacy_key():
    from collapsekit.glossary import LEGACY_KEYS, QUANTITIES

    page = _gen_pages().glossary_page()
    for q in QUANTITIES:
        assert f"## `{q.name}` {{#{q.name}}}" in page
        assert f"**{q.label}** — {q.formula}." in page
    for old, new in LEGACY_KEYS.items():
        assert f"| `{old}` | `{new}` |" in page


def test_cli_page_has_every_command():
    gen = _gen_pages()
    page = gen.cli_page()
    paths = gen._commands()
    assert ["train"] in paths and ["data", "check"] in paths
    for path in paths:
        assert f"## `collapsekit {' '.join(path)}`" in page
        assert f"Usage: collapsekit {' '.join(path)}" in page
    assert "\x1b[" not in page


def test_sphinx_roles_become_optional_references():
    spec = importlib.util.spec_from_file_location(
        "griffe_sphinx_roles", ROOT / "docs" / "tools" / "griffe_sphinx_roles.py"
    )
    pytest.importorskip("griffe")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = module.convert("see :class:`~collapsekit.glossary.Quantity` and :func:`lookup`", "m.x")
    assert got == (
        'see <autoref identifier="collapsekit.glossary.Quantity" optional><code>Quantity</code>'
        '</autoref> and <autoref identifier="m.x.lookup" optional><code>lookup</code></autoref>'
    )


def test_hook_warns_on_an_unrendered_role(caplog: pytest.LogCaptureFixture):
    spec = importlib.util.spec_from_file_location(
        "docs_hooks", ROOT / "docs" / "tools" / "hooks.py"
    )
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    class Page:
        class file:  # noqa: N801 - mkdocs' page.file.src_uri
            src_uri = "reference/api/x.md"

    ok = "<p>see <code>:class:</code> and <a href='#q'><code>Quantity</code></a></p>"
    bad = "<p>uses :func:<code>~collapsekit.data.cache.read_slice</code></p>"
    with caplog.at_level("WARNING", logger="mkdocs.plugins.collapsekit"):
        assert hooks.on_page_content(ok, page=Page) == ok
        assert not caplog.records
        assert hooks.on_page_content(bad, page=Page) == bad
    (record,) = caplog.records
    assert record.getMessage().startswith("reference/api/x.md: unrendered cross-reference: ")
    assert "uses :func:~collapsekit.data.cache.read_slice" in record.getMessage()
