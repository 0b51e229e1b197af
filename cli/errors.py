"""User errors and the one-line-error argument parser, torch-free so that parser.py (and `--help`) stays fast;
commons.py re-exports both."""
from __future__ import annotations

import argparse
from typing import NoReturn


class UserError(Exception):
    """A problem caused by the user's input. Its message is one line: what is wrong and how to fix it."""


class CliParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one-line UserErrors: the error leads, no usage dump (see run_cli)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        prog = self.prog if self.prog.startswith("python") else f"python {self.prog}"
        raise UserError(f"{message}; see {prog} --help")


def check(cond: bool, msg: str) -> None:
    """Raise UserError(msg) unless cond: the flag checks of the parsers."""
    if not cond:
        raise UserError(msg)
