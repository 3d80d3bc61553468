"""Real-data workloads for demos and benchmarks, loaded from local files only (no network).

The loaders live in :mod:`tritonkron.analysis.data` (and its IDX reader in
:mod:`tritonkron.analysis.idx`), so that ``python -m tritonkron.analysis`` works from an installed
wheel, which does not contain ``perf``; this module re-exports them under their old names:

* Fashion-MNIST (60 000 + 10 000 grey 28×28 images, 10 classes), read from the IDX files that
  Debian's ``dataset-fashion-mnist`` package installs under ``/usr/share/datasets/fashion-mnist``
  (``scripts/setup.sh`` installs it when it can);
* scikit-learn's handwritten ``digits`` (1 797 grey 8×8 images, 10 classes), which ships inside
  scikit-learn and so is always available once the ``demo`` extra is installed.

:func:`load_image_classification` returns the first one that is present and records which in
:attr:`Dataset.name` and :attr:`Dataset.note`.
"""

from __future__ import annotations

from tritonkron.analysis.data import (
    FASHION_MNIST_ROOT,
    MIN_STD,
    Dataset,
    MissingDataError,
    fashion_mnist_available,
    load_digits_dataset,
    load_fashion_mnist,
    load_image_classification,
    standardize,
)
from tritonkron.analysis.idx import IdxFormatError, read_idx

__all__ = [
    "FASHION_MNIST_ROOT",
    "MIN_STD",
    "Dataset",
    "IdxFormatError",
    "MissingDataError",
    "fashion_mnist_available",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_image_classification",
    "read_idx",
    "standardize",
]
