"""The paper's spectral study on real gradients (PAPER §3, issue 6).

* :mod:`~tritonkron.analysis.collect` — gradient samples through a ``loss_fn(model, batch)`` hook,
  dense covariances (random coordinate sub-grid for large layers), synthetic covariances.
* :mod:`~tritonkron.analysis.spectral` — the three Kronecker projections of a covariance, the error
  split over its spectrum, divergence-weighted residuals, whitened spectrum, scale identities.
* :mod:`~tritonkron.analysis.hessian` — layer GGN / Hessian-vector products (``torch.func``),
  Lanczos, subspace overlap against k, Rayleigh quotients, resample stability.
* :mod:`~tritonkron.analysis.report` — :func:`run_study` and :func:`write_report` (Markdown,
  PNG, CSV); ``python -m tritonkron.analysis`` runs it on a real workload.
"""

from tritonkron.analysis.collect import (
    LayerSamples,
    collect_gradients,
    covariance,
    kronecker_samples,
    noise_samples,
    spiked_covariance,
)
from tritonkron.analysis.hessian import (
    AlignmentResult,
    curvature_operator,
    factor_alignment,
    hessian_alignment,
    kronecker_top_eigenvectors,
    lanczos,
    rayleigh_quotients,
    subspace_overlap,
)
from tritonkron.analysis.report import LayerStudy, Study, run_study, write_report
from tritonkron.analysis.spectral import (
    ProjectionAnalysis,
    SpectralAnalysis,
    analyse_covariance,
    known_answer_suite,
    null_dimension,
    whitened_spectrum,
)

__all__ = [
    "AlignmentResult",
    "LayerSamples",
    "LayerStudy",
    "ProjectionAnalysis",
    "SpectralAnalysis",
    "Study",
    "analyse_covariance",
    "collect_gradients",
    "covariance",
    "curvature_operator",
    "factor_alignment",
    "hessian_alignment",
    "known_answer_suite",
    "kronecker_samples",
    "kronecker_top_eigenvectors",
    "lanczos",
    "noise_samples",
    "null_dimension",
    "rayleigh_quotients",
    "run_study",
    "spiked_covariance",
    "subspace_overlap",
    "whitened_spectrum",
    "write_report",
]
