"""Checks that the importable ``autotune`` is tritonkron's tuner, next to a tritonkron it fits.

The tritonkron wheel installs two top-level packages, ``tritonkron`` and ``autotune``, and PyPI
has an unrelated package that is also named ``autotune``. Installed into the same environment,
that package overwrites some of these files (``autotune/__init__.py`` first of all), or, earlier
on ``sys.path``, hides this package entirely. Two checks make a mix-up fail with a message that
says what happened and how to repair it instead of an ``AttributeError`` deep in the tuner:

* :func:`check_tritonkron`, run when ``autotune`` is imported: ``tritonkron`` imports and is of
  the release series this ``autotune`` shipped with (:data:`TRITONKRON_SERIES`);
* :func:`check_package`, run first by ``python -m autotune``: the imported ``autotune`` package
  carries the marker :data:`MARKER` that only tritonkron's ``autotune/__init__.py`` defines.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

__all__ = ["MARKER", "TRITONKRON_SERIES", "ForeignAutotuneError", "check_package", "check_tritonkron"]

MARKER = "TRITONKRON_AUTOTUNE"
"""Name of the constant (``True``) that tritonkron's ``autotune/__init__.py`` defines."""

TRITONKRON_SERIES = "0.1"
"""The ``major.minor`` release of tritonkron that this ``autotune`` ships with and needs."""

_REPAIR = (
    "If `pip install autotune` put an unrelated package of that name into this environment, remove it "
    "and restore tritonkron's: `pip uninstall autotune` then `pip install --force-reinstall --no-deps "
    "tritonkron`; if a folder named autotune in the working directory or on PYTHONPATH shadows it, run "
    "from elsewhere."
)


class ForeignAutotuneError(ImportError):
    """The ``autotune`` that Python found is not tritonkron's, or has no matching tritonkron."""


def _series(version: str) -> str:
    """``major.minor`` of a version string (``"0.1.0.dev3" → "0.1"``)."""
    return ".".join(version.split(".")[:2])


def check_tritonkron(series: str = TRITONKRON_SERIES) -> str:
    """Import ``tritonkron`` and check its release series; returns its version.

    Raises:
        ForeignAutotuneError: tritonkron cannot be imported, or its ``major.minor`` is not ``series``.
    """
    try:
        import tritonkron
    except ImportError as error:
        raise ForeignAutotuneError(
            f"tritonkron's autotune needs the tritonkron package it ships with, which failed to "
            f"import ({error}); install it with `pip install tritonkron`. {_REPAIR}"
        ) from error
    version = str(getattr(tritonkron, "__version__", "unknown"))
    if _series(version) != series:
        raise ForeignAutotuneError(
            f"this autotune (from {Path(__file__).resolve().parent}) ships with tritonkron {series}.x, "
            f"but the tritonkron imported from {getattr(tritonkron, '__file__', '?')} is {version}: "
            "the two packages come from different installs. Reinstall tritonkron "
            "(`pip install --force-reinstall --no-deps tritonkron`) so that both come from one wheel."
        )
    return version


def check_package(package: ModuleType) -> None:
    """Check that ``package`` (the imported ``autotune``) is tritonkron's.

    Raises:
        ForeignAutotuneError: it lacks the :data:`MARKER` constant.
    """
    if getattr(package, MARKER, None) is True:
        return
    where = getattr(package, "__file__", None) or list(getattr(package, "__path__", []))
    raise ForeignAutotuneError(
        f"the `autotune` package imported from {where} is not tritonkron's autotune (its __init__ "
        f"does not define {MARKER}); an unrelated package with the same name shadows or overwrote "
        f"it. {_REPAIR}"
    )
