"""Griffe extension: Sphinx roles in docstrings (``:class:`~a.B```) become cross-references.

collapsekit's Google-style docstrings name other objects with Sphinx roles. mkdocstrings renders
Markdown, where a role would show as literal text (``:mod:`x```); this turns each role into an
optional mkdocs-autorefs reference: a link where the target is on a page of the site, plain code
where it is not (a private helper, another library).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`<>]+)`")


def convert(text: str, module: str) -> str:
    """``text`` with every Sphinx role replaced by an optional autorefs reference.

    ``module`` is the dotted path a relative name (``Quantity``) is resolved against.
    """

    def repl(m: re.Match[str]) -> str:
        tilde, target = m.group(2), m.group(3).strip().rstrip("()")
        title = target.rsplit(".", 1)[-1] if tilde else target
        ident = (
            target
            if target.split(".", 1)[0] in {"collapsekit", "torch", "numpy", "monai"}
            else f"{module}.{target}"
        )
        return f'<autoref identifier="{ident}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(repl, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, obj.module.path)
