"""Sphinx configuration for daemonkit's documentation.

Build (CI does, with warnings as errors and no network)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Pages are Markdown, read by MyST; the API reference comes from the
docstrings (``sphinx.ext.autodoc``) and the command-line reference from
daemonkit's own argument parser (the ``daemonkit-help`` directive below), so
neither can drift from the code. Nothing here reaches the network: no
intersphinx, no remote images, the default theme.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# Document this checkout's daemonkit, not whichever one happens to be installed.
DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(DOCS_DIR))

import daemonkit  # noqa: E402  (after the path is set)
from daemonkit.cli import build_parser  # noqa: E402

project = "daemonkit"
author = "The daemonkit developers"
copyright = "the daemonkit developers"
release = daemonkit.__version__
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Headings up to ### get anchors, so pages can link to page.md#a-heading.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"daemonkit {release}"
html_theme_options = {
    "description": "Turn a program into a well-behaved Unix daemon, and know whether it started.",
    "fixed_sidebar": True,
}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # umask=0o022 as written, not umask=18

# The width argparse formats help for (it otherwise asks the terminal).
HELP_WIDTH = 88


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The ``daemonkit`` command's subcommands, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_help(subcommand: str | None) -> str:
    """``daemonkit [SUBCOMMAND] --help``, exactly as the command prints it."""
    # A fixed width, and no colours (argparse 3.14+ may colour its help).
    settings = {"COLUMNS": str(HELP_WIDTH), "NO_COLOR": "1", "PYTHON_COLORS": "0"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        parser = build_parser()
        if subcommand is not None:
            found = _subcommands(parser)
            if subcommand not in found:
                raise ValueError(
                    f"daemonkit has no subcommand {subcommand!r} (it has: {', '.join(found)})"
                )
            parser = found[subcommand]
        return parser.format_help()
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


class CommandHelp(SphinxDirective):
    """``daemonkit-help [SUBCOMMAND]``: the command's ``--help`` as a literal block.

    The text is produced by ``daemonkit.cli.build_parser()`` at build time;
    an unknown subcommand is a build error (a warning, fatal under ``-W``).
    """

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        subcommand = self.arguments[0] if self.arguments else None
        try:
            text = command_help(subcommand)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class CommandList(SphinxDirective):
    """``daemonkit-commands``: a table of every subcommand and its one-line help.

    Generated from the parser, so a subcommand added to the code shows up here
    without anyone having to remember this page.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        parser = build_parser()
        helps = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        table = nodes.table()
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=22)
        group += nodes.colspec(colwidth=66)
        body = nodes.tbody()
        group += body
        for name in _subcommands(parser):
            row = nodes.row()
            command = nodes.entry()
            command += nodes.paragraph("", "", nodes.literal(text=f"daemonkit {name}"))
            text = nodes.entry()
            text += nodes.paragraph(text=helps.get(name, ""))
            row += command
            row += text
            body += row
        return [table]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("daemonkit-help", CommandHelp)
    app.add_directive("daemonkit-commands", CommandList)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
