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
:mod:`autotune.kernel_search`), :mod:`autotune.__main__` (the CLI), :mod:`autotune.device` (its
``--device auto|cpu|cuda`` flag and device-aware timing, shared with the ``perf`` commands).
"""

from autotune.rank import choose_rank
from autotune.search import SearchOptions, tune_model

__all__ = ["SearchOptions", "choose_rank", "tune_model"]
