"""mkdocs hooks: a page with an unrendered cross-reference fails the strict build.

A Sphinx role that reached the page as text (``:class:`X``` renders as ``:class:<code>X</code>``)
is a cross-reference nobody will follow; ``griffe_sphinx_roles`` converts the known ones, and this
catches any form it does not know. mkdocs counts the warning, so ``--strict`` stops.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("mkdocs.plugins.collapsekit")

UNRENDERED = re.compile(r":(?:py:)?[a-z]+:<code>")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Warn about every unrendered role on the page (mkdocs' ``on_page_content`` event)."""
    for m in UNRENDERED.finditer(html):
        window = html[max(0, m.start() - 40) : m.end() + 60]
        context = re.sub(r"<[^>]*>|<[^>]*$|^[^<]*>", "", window).strip()
        log.warning("%s: unrendered cross-reference: …%s…", page.file.src_uri, context)
    return html
