"""Stack inspection shared by the failure-injection tests."""

from __future__ import annotations

import sys


def called_from(function: str) -> bool:
    """Whether a frame of the current stack (above the caller) runs a function of that name."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False
