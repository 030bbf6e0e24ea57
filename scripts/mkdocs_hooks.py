"""MkDocs hooks for the documentation site (see mkdocs.yml).

The docstrings are written for Sphinx (``:func:`machine_for```); mkdocstrings renders
the role's name as text before the code. Drop the role, keep the code.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|attr|data|mod|meth|exc|obj):(?=<code)")


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub("", html)
