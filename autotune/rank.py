"""Subspace rank per factor from the spectra of calibrated factor statistics (docs/maths.md §3.4–§4.2, §4.5).

The rank tooling of the tuner, in three modules, all re-exported here:

- :mod:`autotune.rank_rule`: the rank rule (:func:`choose_rank`, :func:`explain_rank`,
  :func:`rank_profile`) and the ranks shared by the parameters of one shape (:func:`layer_ranks`);
- :mod:`autotune.sketch_choice`: the sketched mode's k_A, k_B and sketch rank ℓ under its cost cap
  (:func:`sketch_ranks`, :func:`sketch_cap`, :func:`sketch_width`);
- :mod:`autotune.calibration`: the calibration run that gives the factor spectra (:func:`calibrate`).
"""

from __future__ import annotations

from autotune.calibration import Calibration, ParamSpectra, calibrate, calibration_beta2
from autotune.rank_rule import (
    DEFAULT_FLATNESS,
    DEFAULT_MASS,
    RankChoice,
    choose_rank,
    explain_rank,
    layer_ranks,
    rank_profile,
)
from autotune.sketch_choice import (
    DEFAULT_SKETCH_BUDGET,
    SKETCH_MIN_CAP,
    SketchChoice,
    sketch_cap,
    sketch_ranks,
    sketch_width,
)

__all__ = [
    "DEFAULT_FLATNESS",
    "DEFAULT_MASS",
    "DEFAULT_SKETCH_BUDGET",
    "SKETCH_MIN_CAP",
    "Calibration",
    "ParamSpectra",
    "RankChoice",
    "SketchChoice",
    "calibrate",
    "calibration_beta2",
    "choose_rank",
    "explain_rank",
    "layer_ranks",
    "rank_profile",
    "sketch_cap",
    "sketch_ranks",
    "sketch_width",
]
