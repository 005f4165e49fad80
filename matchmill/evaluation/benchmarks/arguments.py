"""Argument types shared by the ``matchmill bench`` and ``matchmill report`` subcommands."""

from __future__ import annotations

import argparse


def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, or a one-line usage error naming the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


#: An integer >= 1.
positive_int = int_at_least(1, "a positive integer")
#: An integer >= 0.
non_negative_int = int_at_least(0, "an integer >= 0")
