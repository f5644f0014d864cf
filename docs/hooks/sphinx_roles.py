"""MkDocs hook: the package's docstrings use Sphinx roles (``:func:`make_mask```); show them as plain code.

mkdocstrings renders ``:func:`make_mask``` as ``:func:<code>make_mask</code>``; this drops the role prefix.
Registered under ``hooks:`` in ``mkdocs.yml``.
"""
from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):(?=<code)")


def on_page_content(html: str, page, config, files) -> str:  # mkdocs hook
    return ROLE.sub("", html)
