"""Argument types shared by the ``python -m perf …`` command lines."""

from __future__ import annotations

import argparse


def _int_at_least(low: int, text: str) -> int:
    value = int(text)
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _int_at_least(1, text)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _int_at_least(0, text)
