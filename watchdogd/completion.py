"""``watchdogd completion bash|zsh``: a completion script generated from the argparse parser.

shtab writes it: a small, maintained library with no dependencies of its own
that turns an argparse parser into a static bash or zsh script (subcommands,
their options, choices, file names), so pressing Tab never starts Python.
argcomplete was the other candidate; it runs the program on every Tab, which
for watchdogd means importing pydantic each time. Imported only by this command.
"""

from __future__ import annotations

import argparse

from watchdogd.clihelp import subcommands

FILES = {"bash": "_shtab_compgen_files", "zsh": "_files"}
DIRECTORIES = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}
_FILE_METAVARS = {"PATH", "FILE"}


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Arguments that take a file or a folder complete file or folder names."""
    parsers = [parser, *(sub for _, sub in subcommands(parser))]
    for each in parsers:
        for action in each._actions:
            if action.metavar in _FILE_METAVARS:
                action.complete = FILES  # type: ignore[attr-defined]
            elif action.metavar == "DIR":
                action.complete = DIRECTORIES  # type: ignore[attr-defined]


def _short_descriptions(parser: argparse.ArgumentParser) -> None:
    """A subcommand's one-line help, not its --help paragraph, beside it in zsh's menu."""
    for each in [parser, *(sub for _, sub in subcommands(parser))]:
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._get_subactions()}
                for name, sub in action.choices.items():
                    sub.description = helps.get(name) or sub.description


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    import shtab

    _mark_paths(parser)
    _short_descriptions(parser)
    text: str = shtab.complete(parser, shell=shell)
    return text
