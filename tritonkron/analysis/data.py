"""Image-classification data for the analysis, read from local files only (nothing is downloaded).

Two data sets, both installed by packages rather than fetched:

* Fashion-MNIST (60 000 + 10 000 grey 28×28 images, 10 classes), read from the IDX files that
  Debian's ``dataset-fashion-mnist`` package installs under ``/usr/share/datasets/fashion-mnist``;
* scikit-learn's handwritten ``digits`` (1 797 grey 8×8 images, 10 classes), which ships inside
  scikit-learn: ``pip install "tritonkron[analysis]"`` installs it.

:func:`load_image_classification` returns the first one that is present and records which in
:attr:`Dataset.name` and :attr:`Dataset.note`. ``perf.workloads`` re-exports this module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tritonkron.analysis.idx import IdxFormatError, read_idx

__all__ = [
    "ANALYSIS_EXTRA",
    "FASHION_MNIST_ROOT",
    "MIN_STD",
    "WORKLOADS",
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

ANALYSIS_EXTRA = 'pip install "tritonkron[analysis]"'
"""The install command that brings scikit-learn (digits) and matplotlib (figures)."""

WORKLOADS: Sequence[str] = ("fashion_mnist", "digits")
"""The data sets :func:`load_image_classification` knows, preferred first."""

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""

_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

MIN_STD = 0.1
"""Floor on a feature's standard deviation when standardising (features are on a [0, 1] scale first).

Border pixels are almost always 0; dividing by their tiny training std would turn a rare non-zero
test pixel into a huge input. With the floor they are only centred and scaled by at most 1 / MIN_STD.
"""


class MissingDataError(ImportError):
    """Raised when the data set asked for cannot be loaded from what is installed.

    Digits needs scikit-learn; ``fashion_mnist`` falls back to digits without its IDX files. The
    message names what to install.
    """


@dataclass(frozen=True)
class Dataset:
    """An image-classification data set as flat float features and integer labels.

    Attributes:
        name: short identifier, ``"fashion_mnist"`` or ``"digits"``.
        x_train: float32 tensor (n_train, n_features), standardised with the training statistics.
        y_train: int64 tensor (n_train,) of class indices in ``[0, num_classes)``.
        x_test: float32 tensor (n_test, n_features), standardised with the training statistics.
        y_test: int64 tensor (n_test,).
        num_classes: number of classes.
        note: one human-readable sentence on where the data came from (and any fallback taken).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    note: str

    @property
    def num_features(self) -> int:
        """Number of input features (pixels) per example."""
        return int(self.x_train.shape[1])

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with its four tensors on ``device`` (``self`` when they are there already)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        tensors = ("x_train", "y_train", "x_test", "y_test")
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in tensors})


def standardize(
    x_train: np.ndarray, x_test: np.ndarray, min_std: float = MIN_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale each feature with the training split's mean and (floored) std.

    Args:
        x_train: (n_train, n_features) features, already on a [0, 1] scale.
        x_test: (n_test, n_features) features on the same scale.
        min_std: floor on each feature's std (see :data:`MIN_STD`).

    Returns:
        ``(x_train, x_test)`` as float32 tensors; every training feature has mean 0 and std
        ``std / max(std, min_std)`` (1 for all but near-constant features).
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    mean = x_train.mean(axis=0)
    std = np.maximum(x_train.std(axis=0), min_std)
    train = torch.from_numpy(((x_train - mean) / std).astype(np.float32))
    test = torch.from_numpy(((x_test - mean) / std).astype(np.float32))
    return train, test


def _labels(y: np.ndarray, num_classes: int, where: str) -> torch.Tensor:
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels outside [0, {num_classes}): min {y.min()}, max {y.max()}")
    return torch.from_numpy(y)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {root}")


def load_fashion_mnist(
    root: str | os.PathLike[str] = FASHION_MNIST_ROOT, limit: int | None = None
) -> Dataset:
    """Load Fashion-MNIST from its four IDX files under ``root``.

    Pixels are scaled to [0, 1], then standardised per feature with the training statistics
    (:func:`standardize`); images are flattened to 784 features.

    Args:
        root: folder with ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
            ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
        limit: if given, keep only the first ``limit`` examples of each split.

    Returns:
        The data set, ``name="fashion_mnist"``.

    Raises:
        FileNotFoundError: one of the files is missing.
        IdxFormatError: one of the files is malformed, or images and labels disagree in count.
    """
    root = Path(root)
    paths = {key: _find_idx(root, stem) for key, stem in _FASHION_FILES.items()}
    arrays = {key: read_idx(path, limit=limit) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise IdxFormatError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not match "
                "(expected (n, rows, cols) and (n,))"
            )
    x_train = arrays["x_train"].reshape(arrays["x_train"].shape[0], -1) / 255.0
    x_test = arrays["x_test"].reshape(arrays["x_test"].shape[0], -1) / 255.0
    train, test = standardize(x_train, x_test)
    n_train, n_test = train.shape[0], test.shape[0]
    return Dataset(
        name="fashion_mnist",
        x_train=train,
        y_train=_labels(arrays["y_train"], 10, str(paths["y_train"])),
        x_test=test,
        y_test=_labels(arrays["y_test"], 10, str(paths["y_test"])),
        num_classes=10,
        note=f"Fashion-MNIST from {root} ({n_train} train / {n_test} test images, 28x28)",
    )


def load_digits_dataset(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Load scikit-learn's handwritten digits (8×8, 10 classes) with a stratified train/test split.

    Pixels (0–16) are scaled to [0, 1], then standardised per feature with the training statistics.

    Args:
        test_fraction: share of the 1 797 images held out for testing.
        seed: seed of the (deterministic) split.

    Returns:
        The data set, ``name="digits"``.

    Raises:
        MissingDataError: scikit-learn is not installed (the message names the extra to install).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise MissingDataError(
            f"the digits data set ships with scikit-learn, which is not installed ({error}); "
            f"install it with: {ANALYSIS_EXTRA}"
        ) from error

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    train, test = standardize(x_train, x_test)
    return Dataset(
        name="digits",
        x_train=train,
        y_train=_labels(y_train, 10, "digits"),
        x_test=test,
        y_test=_labels(y_test, 10, "digits"),
        num_classes=10,
        note=f"scikit-learn digits ({train.shape[0]} train / {test.shape[0]} test images, 8x8)",
    )


def fashion_mnist_available(root: str | os.PathLike[str] = FASHION_MNIST_ROOT) -> bool:
    """Whether all four Fashion-MNIST IDX files exist under ``root``."""
    try:
        for stem in _FASHION_FILES.values():
            _find_idx(Path(root), stem)
    except FileNotFoundError:
        return False
    return True


def load_image_classification(
    prefer: str = "fashion_mnist",
    root: str | os.PathLike[str] = FASHION_MNIST_ROOT,
    limit: int | None = None,
) -> Dataset:
    """Load the preferred image-classification data set, falling back to digits.

    Args:
        prefer: ``"fashion_mnist"`` (used when its files exist under ``root``, otherwise digits)
            or ``"digits"``.
        root: where to look for Fashion-MNIST.
        limit: cap on the examples of each Fashion-MNIST split (digits is always used whole).

    Returns:
        The data set; ``name`` says which one it is and ``note`` says why, including a fallback.

    Raises:
        ValueError: unknown ``prefer``.
        IdxFormatError: the Fashion-MNIST files exist but are malformed (no silent fallback).
        MissingDataError: digits is needed (chosen, or the fallback) but scikit-learn is not installed.
    """
    if prefer not in WORKLOADS:
        raise ValueError(f"prefer must be one of {', '.join(map(repr, WORKLOADS))}; got {prefer!r}")
    if prefer == "digits":
        return load_digits_dataset()
    if fashion_mnist_available(root):
        return load_fashion_mnist(root, limit=limit)
    missing = f"no Fashion-MNIST IDX files in {root} (`apt-get install dataset-fashion-mnist` provides them)"
    try:
        digits = load_digits_dataset()
    except MissingDataError as error:
        raise MissingDataError(f"{missing}, and {error}") from error
    note = (
        f"Fashion-MNIST not installed (no IDX files in {root}; `apt-get install dataset-fashion-mnist` "
        f"provides them); fell back to {digits.note}"
    )
    return dataclasses.replace(digits, note=note)
