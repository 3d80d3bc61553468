"""Tests of the real-data loaders in ``perf.workloads`` and a smoke run of ``perf.demo``."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from perf import demo
from perf.device import resolve_device
from perf.workloads import (
    Dataset,
    IdxFormatError,
    fashion_mnist_available,
    load_digits_dataset,
    load_fashion_mnist,
    load_image_classification,
    read_idx,
)

_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file, written independently of the parser under test."""
    code = _TYPE_CODES[array.dtype]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trips_uint8_images_and_labels(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(5,), dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / "images", images, compress))
    got_labels = read_idx(write_idx(tmp_path / "labels", labels, compress))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 4, 3)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_read_idx_decodes_big_endian_multibyte_types(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(12).reshape(3, 4) * 1000 - 5000).astype(dtype)
    got = read_idx(write_idx(tmp_path / "x.idx", array, compress=False))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_read_idx_limit_reads_only_the_first_entries(tmp_path: Path) -> None:
    images = np.arange(6 * 2 * 2, dtype=np.uint8).reshape(6, 2, 2)
    path = write_idx(tmp_path / "images.gz", images, compress=True)
    np.testing.assert_array_equal(read_idx(path, limit=2), images[:2])
    np.testing.assert_array_equal(read_idx(path, limit=100), images)


def test_read_idx_rejects_bad_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(IdxFormatError, match="magic number"):
        read_idx(path)


def test_read_idx_rejects_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">HBBI", 0, 0x07, 1, 3) + b"abc")
    with pytest.raises(IdxFormatError, match="type code 0x07"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_rejects_truncated_and_oversized_files(tmp_path: Path, compress: bool) -> None:
    data = idx_bytes(np.zeros((4, 3), dtype=np.uint8))
    short, long = tmp_path / "short", tmp_path / "long"
    short.write_bytes(gzip.compress(data[:-2]) if compress else data[:-2])
    long.write_bytes(gzip.compress(data + b"\0") if compress else data + b"\0")
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(short)
    with pytest.raises(IdxFormatError, match="trailing"):
        read_idx(long)


def test_read_idx_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def make_fake_fashion_root(root: Path, n_train: int = 20, n_test: int = 8) -> Path:
    """Write four tiny Fashion-MNIST-shaped IDX files (gzip, as Debian ships them)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels, compress=True)
    return root


def test_load_fashion_mnist_parses_standardises_and_limits(tmp_path: Path) -> None:
    root = make_fake_fashion_root(tmp_path / "fmnist")
    data = load_fashion_mnist(root)
    assert data.name == "fashion_mnist"
    assert data.x_train.shape == (20, 784) and data.x_test.shape == (8, 784)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == [i % 10 for i in range(20)]
    assert data.x_train.mean(dim=0).abs().max() < 1e-5
    limited = load_fashion_mnist(root, limit=5)
    assert limited.x_train.shape == (5, 784) and limited.x_test.shape == (5, 784)
    assert fashion_mnist_available(root)
    chosen = load_image_classification(root=root)
    assert chosen.name == "fashion_mnist" and "Fashion-MNIST" in chosen.note


def test_load_fashion_mnist_rejects_mismatched_counts(tmp_path: Path) -> None:
    root = make_fake_fashion_root(tmp_path / "fmnist")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8), compress=True)
    with pytest.raises(IdxFormatError, match="do not match"):
        load_fashion_mnist(root)


def test_fallback_to_digits_when_fashion_mnist_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    assert not fashion_mnist_available(missing)
    with pytest.raises(FileNotFoundError):
        load_fashion_mnist(missing)
    data = load_image_classification(prefer="fashion_mnist", root=missing)
    assert data.name == "digits"
    assert "Fashion-MNIST not installed" in data.note
    assert "fell back to scikit-learn digits" in data.note


def test_prefer_must_be_known() -> None:
    with pytest.raises(ValueError, match="prefer"):
        load_image_classification(prefer="cifar")


def test_digits_dataset_is_sane() -> None:
    data = load_digits_dataset()
    assert isinstance(data, Dataset)
    assert data.name == "digits" and data.num_classes == 10 and data.num_features == 64
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert data.x_train.dtype == torch.float32 and data.y_test.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(10)) and set(data.y_test.tolist()) == set(range(10))
    assert data.x_train.mean(dim=0).abs().max() < 1e-5
    stds = data.x_train.std(dim=0, unbiased=False)
    assert stds.max() < 1.0 + 1e-4
    assert (stds > 0.99).sum() >= 40  # all but the near-constant border pixels are unit-std
    assert torch.isfinite(data.x_test).all()


def test_batch_schedule_is_deterministic_and_covers_each_epoch() -> None:
    a = demo.batch_schedule(100, steps=7, batch_size=32, seed=3)
    b = demo.batch_schedule(100, steps=7, batch_size=32, seed=3)
    assert a.shape == (7, 32) and torch.equal(a, b)
    first_epoch = a[:3].flatten()
    assert first_epoch.unique().numel() == 96
    assert not torch.equal(a, demo.batch_schedule(100, steps=7, batch_size=32, seed=4))


def test_demo_smoke_run_writes_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results" / "demo.md"
    args = ["--dataset", "digits", "--steps", "12", "--seeds", "1", "--lrs", "1e-3", "--batch-size", "64"]
    args += ["--precondition-every", "5", "--rank", "8", "--tune-steps", "3", "--out", str(out)]
    assert demo.main(args) == 0
    text = out.read_text(encoding="utf-8")
    labels = ("AdamW", "Kron logdet", "Kron von_neumann", "Kron frobenius", "Kron logdet rank=8")
    for label in (*labels, "Kron logdet rank=auto", "Kron logdet rank=auto sketch"):
        assert f"| {label} " in text
    assert "dataset: `digits`" in text and "steps: 12" in text and "torch " in text
    assert (out.parent / "tuning.json").is_file()  # the autotune step writes next to the report
    kind = resolve_device("auto").type  # the default --device
    device_line = next(line for line in text.splitlines() if line.startswith("- device: "))
    assert re.fullmatch(rf"- device: {kind} \(.+\)", device_line), device_line
    assert f"calibrated the MLP on {kind} (" in text.split("## Autotune", 1)[1]
    summary_rows = [line for line in text.split("## Autotune")[0].splitlines() if line.startswith("| ")]
    assert len(summary_rows) == 8  # header + 7 optimizers
    assert all("nan" not in row.lower() for row in summary_rows), summary_rows


def test_held_out_python_sources_are_ascii_library_code_in_a_fixed_order() -> None:
    from perf.text import load_corpus, load_python_sources

    small = load_python_sources(max_chars=200_000)
    assert small.name == "python_stdlib" and len(small.text) == 200_000
    assert small.text.isascii() and "def " in small.text and "import " in small.text
    assert load_python_sources(max_chars=200_000).text == small.text  # same text on every call
    assert load_corpus("python_stdlib").text.startswith(small.text[:10_000])
