"""The Sphinx documentation builds cleanly, and no page is left out of it.

The build is CI's: ``python -m sphinx -W --keep-going -b html docs OUT``, warnings
as errors, run in a fresh interpreter (Sphinx imports daemonkit and the pages'
configuration; none of that should leak into the test process). It is skipped,
saying so, only when Sphinx or MyST is not installed (``pip install -e
'.[docs]'``). The toctree check reads the pages themselves, so it runs without
Sphinx and names the page that is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_DIR

from daemonkit.cli import build_parser

DOCS = PROJECT_DIR / "docs"

pytestmark = pytest.mark.timeout(120)

# CI's command, less the two paths.
SPHINX_BUILD = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-b", "html"]

# A MyST toctree: ```{toctree} ... ``` (its body holds options and entries).
TOCTREE = re.compile(
    r"^(?P<fence>`{3,}|~{3,})\{toctree\}[^\n]*\n(?P<body>.*?)^(?P=fence)\s*$",
    re.MULTILINE | re.DOTALL,
)


def need_sphinx() -> None:
    """Skip unless Sphinx and myst_parser can be imported."""
    missing = [name for name in ("sphinx", "myst_parser") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: pip install -e '.[docs]' to build the docs"
        )


def pages() -> list[Path]:
    """Every Markdown page under docs/, except build output."""
    return sorted(
        path for path in DOCS.rglob("*.md") if "_build" not in path.relative_to(DOCS).parts
    )


def toctree_entries(page: Path) -> list[Path]:
    """The pages ``page``'s toctrees name (option lines and captions left out)."""
    entries = []
    for match in TOCTREE.finditer(page.read_text()):
        for line in match["body"].splitlines():
            entry = line.strip()
            if not entry or entry.startswith(":"):
                continue
            entry = re.sub(r"^.*<(.+)>$", r"\1", entry)  # "Title <page>"
            target = DOCS / entry.lstrip("/") if entry.startswith("/") else page.parent / entry
            entries.append(target.with_suffix(".md").resolve())
    return entries


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    """CI's build command succeeds with no warning (``-W``): every cross-reference,
    literalinclude, autodoc target and toctree entry resolves, with no network."""
    need_sphinx()
    out = tmp_path / "html"
    build = subprocess.run(
        [*SPHINX_BUILD, str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    report = f"stdout:\n{build.stdout[-3000:]}\nstderr:\n{build.stderr[-5000:]}"
    assert build.returncode == 0, report
    assert "build succeeded" in build.stdout, report
    for page in pages():
        html = out / page.relative_to(DOCS).with_suffix(".html")
        assert html.is_file(), f"no HTML for {page.relative_to(DOCS)}"
    assert (out / "detach.png").is_file() or (out / "_images" / "detach.png").is_file()


def test_every_page_is_in_a_toctree() -> None:
    """Every page is reachable from index.md through toctrees, so none exists only for
    someone who knows its file name (Sphinx warns about these too, but this says which
    page without building)."""
    index = (DOCS / "index.md").resolve()
    reached = {index}
    todo = [index]
    while todo:
        page = todo.pop()
        for entry in toctree_entries(page):
            if entry.is_file() and entry not in reached:
                reached.add(entry)
                todo.append(entry)
    missing = [str(page.relative_to(DOCS)) for page in pages() if page.resolve() not in reached]
    assert missing == [], f"pages in no toctree reachable from index.md: {missing}"


def test_toctrees_name_existing_pages_only() -> None:
    """A toctree entry that names no file is a broken link in the navigation (the
    ``testing`` page, from the pytest plugin's documentation, must exist too)."""
    broken = [
        f"{page.relative_to(DOCS)} -> {entry.relative_to(DOCS.resolve())}"
        for page in pages()
        for entry in toctree_entries(page)
        if not entry.is_file()
    ]
    assert broken == [], f"toctree entries without a page: {broken}"


def test_every_subcommand_is_in_the_cli_reference() -> None:
    """Each ``daemonkit`` subcommand has its generated help on the CLI reference page,
    so a new subcommand cannot ship undocumented."""
    cli_page = (DOCS / "reference" / "cli.md").read_text()
    documented = set(re.findall(r"^```\{daemonkit-help\}\s*(\S+)\s*$", cli_page, re.MULTILINE))
    parser = build_parser()
    commands = next(
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    missing = sorted(set(commands) - documented)
    assert missing == [], f"docs/reference/cli.md has no {{daemonkit-help}} for {missing}"
