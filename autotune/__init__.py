"""The tuner: ``python -m autotune --model MODULE:FACTORY [--steps N] [--out tuning.json]``.

It chooses, per parameter shape of a model, the block size, the subspace rank of each Kronecker
factor (from the spectra of a short calibration run on real batches), the ranks and sketch rank ℓ
of the sketched mode (``sketch=True``, under a memory cap) and, on CUDA, the Triton kernel
configurations, and writes them as a versioned JSON tuning file. The library reads that
file through :mod:`tritonkron.tuning.file` and never imports this package.

Modules: :mod:`autotune.space` (what is searched), :mod:`autotune.measure` (the timing
primitive), :mod:`autotune.rank` (calibration and the rank rule: :mod:`autotune.calibration`,
:mod:`autotune.rank_rule`, :mod:`autotune.sketch_choice`), :mod:`autotune.search` (the per-shape
search: :mod:`autotune.search_types`, :mod:`autotune.step_timing`, :mod:`autotune.rank_search`,
:mod:`autotune.kernel_search`), :mod:`autotune.__main__` (the CLI), :mod:`autotune.provenance` (the commit a tuning file records), :mod:`autotune.device` (its
``--device auto|cpu|cuda`` flag and device-aware timing, shared with the ``perf`` commands).

PyPI has an unrelated package also named ``autotune``. :data:`TRITONKRON_AUTOTUNE` marks this one,
and importing it checks that ``tritonkron`` imports and is of the release series it shipped with
(:mod:`autotune._guard`; ``python -m autotune`` also checks the marker before anything else).
"""

TRITONKRON_AUTOTUNE = True
"""Marker: this ``autotune`` is tritonkron's tuner (checked by :func:`autotune._guard.check_package`)."""

__version__ = "0.1.0"
"""The tritonkron release this package ships with."""

from autotune._guard import check_tritonkron  # noqa: E402

check_tritonkron()  # before the modules below import tritonkron, for a clear error when it is missing

from autotune.rank import choose_rank  # noqa: E402
from autotune.search import SearchOptions, tune_model  # noqa: E402

__all__ = ["TRITONKRON_AUTOTUNE", "SearchOptions", "choose_rank", "tune_model"]
