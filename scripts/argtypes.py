"""argparse value types shared by the scripts: each says what it expected and what it got."""
from __future__ import annotations

import argparse


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
