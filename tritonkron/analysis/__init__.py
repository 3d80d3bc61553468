"""The paper's spectral study on real gradients (docs/maths.md §3).

* :mod:`~tritonkron.analysis.collect` — gradient samples through a ``loss_fn(model, batch)`` hook,
  dense covariances (random coordinate sub-grid for large layers), synthetic covariances.
* :mod:`~tritonkron.analysis.spectral` — the three Kronecker projections of a covariance and the
  error split over its spectrum; :mod:`~tritonkron.analysis.measures` — divergence-weighted
  residuals, whitened spectrum, scale identities and the other per-projection measures.
* :mod:`~tritonkron.analysis.curvature` — layer GGN / Hessian-vector products (``torch.func``) and
  Lanczos; :mod:`~tritonkron.analysis.hessian` — subspace overlap against k, Rayleigh quotients,
  resample stability.
* :mod:`~tritonkron.analysis.study` — :func:`run_study`; :mod:`~tritonkron.analysis.report` —
  :func:`write_report` (Markdown, with :mod:`~tritonkron.analysis.tables`,
  :mod:`~tritonkron.analysis.figures` and :mod:`~tritonkron.analysis.claims`);
  ``python -m tritonkron.analysis`` runs it on a real workload from
  :mod:`~tritonkron.analysis.data` (Fashion-MNIST or scikit-learn's digits, read from installed
  files; :mod:`~tritonkron.analysis.idx` reads the IDX format).
"""

from tritonkron.analysis.collect import (
    LayerSamples,
    collect_gradients,
    covariance,
    kronecker_samples,
    noise_samples,
    spiked_covariance,
)
from tritonkron.analysis.curvature import curvature_operator, lanczos
from tritonkron.analysis.hessian import (
    AlignmentResult,
    factor_alignment,
    hessian_alignment,
    kronecker_top_eigenvectors,
    rayleigh_quotients,
    subspace_overlap,
)
from tritonkron.analysis.measures import null_dimension, whitened_spectrum
from tritonkron.analysis.report import write_report
from tritonkron.analysis.spectral import (
    ProjectionAnalysis,
    SpectralAnalysis,
    analyse_covariance,
    known_answer_suite,
)
from tritonkron.analysis.study import LayerStudy, Study, run_study

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
