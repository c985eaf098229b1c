"""
MkDocs hooks (mkdocs.yml): BENCHMARKS.md, which `make bench` writes at the
repository's root, becomes the site's page ``benchmarks-report.md``, and its
plots (``bench/plots/*.png``) files under ``plots/``; its links to
repository files are pointed at their pages on the site. The report stays one
file, never copied into docs/ by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
LINKS = {"](bench/README.md)": "](benchmarks.md#running-them)", "](bench/plots/": "](plots/"}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    report = (ROOT / "BENCHMARKS.md").read_text()
    for old, new in LINKS.items():
        report = report.replace(old, new)
    files.append(File.generated(config, "benchmarks-report.md", content=report))
    for plot in sorted((ROOT / "bench" / "plots").glob("*.png")):
        files.append(File.generated(config, f"plots/{plot.name}", abs_src_path=str(plot)))
    return files


# Docstrings cross-reference in Sphinx's roles (:func:`receiver`, :class:`~patchboard.Listener`),
# which Markdown leaves as text before the code: the site shows the code alone.
ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):(<code>)~?")


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return ROLE.sub(r"\1", html)
