"""What the scripts share about their command lines: the parser, whose refusals are short
(exit status 2, at most two lines), and argparse value types that say what they expected
and what they got."""
from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, refusing bad input in at most two lines on stderr and exit status 2:

        train.py: error: argument --lr: expected a positive number, got '-1'
        try 'train.py --help'

    (argparse's own ``error`` prints the whole usage first: 13 lines for train.py.) A
    message's own line breaks are joined, so the first line is the whole message."""

    def error(self, message: str) -> NoReturn:
        """A bad command line: the message, then where to read how the command is used."""
        self.refuse(message, hint=True)

    def refuse(self, message: str, hint: bool = False) -> NoReturn:
        """Bad input whose message already says the fix (a file that is not a checkpoint,
        an image folder with one class): one line; ``hint``: add ``try '<prog> --help'``."""
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n" + (f"try '{self.prog} --help'\n" if hint else ""))


def one_line(message) -> str:
    """``message`` (text or an exception) on one line: its line breaks become spaces."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def number(convert, accept, expected):
    """An argparse type: ``convert`` the text, keep it if ``accept(value)``, else say
    what was ``expected`` and what was given."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = number(float, lambda v: 0 <= v < float("inf"), "a non-negative number")
open_fraction = number(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
unit_interval = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
