"""MkDocs hook: the example report's figures (``reports/example/*.png``, committed) served under ``example/``.

Pages show them as ``![...](example/NAME.png)`` without a second copy in ``docs/``. Registered under ``hooks:`` in
``mkdocs.yml``.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

SOURCE = Path(__file__).resolve().parents[2] / "reports" / "example"


def on_files(files: Files, config) -> Files:  # mkdocs hook
    for png in sorted(SOURCE.glob("*.png")):
        files.append(File.generated(config, f"example/{png.name}", abs_src_path=str(png)))
    return files
