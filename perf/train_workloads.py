"""The workloads of the training benchmark: model, data, minibatches, loss, validation and budget.

:func:`build_workload` builds each of :data:`WORKLOADS` at the quick, full or test size; the
protocol that trains on them is :mod:`perf.train`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perf.demo_training import make_mlp
from perf.models import CharGPT, SmallCNN, count_parameters
from perf.text import encode_corpus, load_corpus
from perf.workloads import Dataset, load_image_classification

__all__ = ["WORKLOADS", "Workload", "build_workload"]

WORKLOADS = ("char_lm", "mlp", "cnn")


@dataclass(frozen=True)
class Workload:
    """A model, its data and its training budget.

    Attributes:
        name: ``"char_lm"``, ``"mlp"`` or ``"cnn"``.
        title: human-readable description (model and data).
        data: the data set name actually used (``"shakespeare"``, ``"fashion_mnist"``, …).
        note: where the data came from, including any fallback.
        make_model: builds a fresh model (call after seeding).
        batches: ``seed -> [(x, y)] * steps``, identical for every optimizer at a seed.
        loss: ``(model, x, y) -> scalar`` training loss.
        evaluate: ``model -> (val loss, val accuracy)`` (accuracy NaN for the language model).
        steps: optimizer steps per run.
        eval_every: steps between validation passes.
        lrs: the learning-rate grid.
        params: number of trainable parameters.
        device: where the models, batches and validation data live.
    """

    name: str
    title: str
    data: str
    note: str
    make_model: Callable[[], nn.Module]
    batches: Callable[[int], list[tuple[Tensor, Tensor]]]
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module], tuple[float, float]]
    steps: int
    eval_every: int
    lrs: tuple[float, ...]
    params: int
    device: torch.device = torch.device("cpu")


def _classification(data: Dataset, val_limit: int) -> tuple[Callable, Callable]:
    x_val, y_val = data.x_test[:val_limit], data.y_test[:val_limit]

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> tuple[float, float]:
        logits = model(x_val)
        return float(F.cross_entropy(logits, y_val)), float((logits.argmax(1) == y_val).float().mean())

    return loss, evaluate


def _image_batches(
    data: Dataset, steps: int, batch_size: int
) -> Callable[[int], list[tuple[Tensor, Tensor]]]:
    from perf.demo_training import batch_schedule

    def batches(seed: int) -> list[tuple[Tensor, Tensor]]:
        schedule = batch_schedule(data.x_train.shape[0], steps, batch_size, seed).to(data.x_train.device)
        return [(data.x_train[idx], data.y_train[idx]) for idx in schedule]

    return batches


@dataclass(frozen=True)
class _Size:
    """Budget of one workload at one mode."""

    steps: int
    batch: int
    evals: int
    val: int
    lrs: tuple[float, ...]


_GRID = (1e-3, 3e-3, 1e-2)
_GRID_FULL = (3e-4, 1e-3, 3e-3, 1e-2)
_TINY = _Size(8, 16, 4, 256, (1e-3, 3e-3))
_SIZES = {  # (quick, full)
    "char_lm": (_Size(100, 16, 10, 64, _GRID), _Size(1000, 32, 20, 128, _GRID_FULL)),
    "mlp": (_Size(60, 128, 10, 2000, _GRID), _Size(600, 128, 20, 10_000, _GRID_FULL)),
    "cnn": (_Size(40, 64, 10, 1000, _GRID), _Size(500, 128, 20, 10_000, _GRID_FULL)),
}


def _workload(
    size: _Size,
    device: torch.device,
    make_model: Callable[[], nn.Module],
    *,
    name: str,
    title: str,
    data: str,
    note: str,
    batches: Callable[[int], list[tuple[Tensor, Tensor]]],
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor],
    evaluate: Callable[[nn.Module], tuple[float, float]],
) -> Workload:
    """The workload of ``make_model`` with ``size``'s budget on ``device``: ``size.steps`` steps, a
    validation pass every steps/evals steps, ``size.lrs``, and the parameter count of a model built
    after ``torch.manual_seed(0)``; the keywords are the fields of :class:`Workload`."""
    torch.manual_seed(0)
    return Workload(
        name=name,
        title=title,
        data=data,
        note=note,
        make_model=make_model,
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        steps=size.steps,
        eval_every=max(1, size.steps // size.evals),
        lrs=size.lrs,
        params=count_parameters(make_model()),
        device=device,
    )


def build_workload(
    name: str, quick: bool, tiny: bool = False, device: torch.device | str = "cpu", corpus: str = "auto"
) -> Workload:
    """Build one workload at the quick, full or test (``tiny``) size.

    ==========  =================================  ===============  ===============
    workload    model                              quick            full
    ==========  =================================  ===============  ===============
    char_lm     CharGPT d128 × 2, context 64       100 steps × 16   1000 steps × 32
    mlp         MLP 784-256-256-10                 60 steps × 128   600 steps × 128
    cnn         SmallCNN 16/32 channels, fc 64     40 steps × 64    500 steps × 128
    ==========  =================================  ===============  ===============

    Args:
        name: one of :data:`WORKLOADS`.
        quick: the ``--quick`` budget (fewer steps, smaller validation sets, grid of 3).
        tiny: a seconds-long configuration for the test suite (overrides ``quick``).
        device: where the models, batches and validation data live (the data are loaded on the
            CPU and moved once; batches and initial weights are the same on every device).
        corpus: the char LM's text (:func:`perf.text.load_corpus`'s ``prefer``; ``"python_stdlib"``
            is the held-out text).

    Returns:
        The workload.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")
    size = _TINY if tiny else _SIZES[name][0 if quick else 1]
    device = torch.device(device)
    if name == "char_lm":
        return _char_lm(size, tiny, device, corpus)
    data = load_image_classification("digits" if tiny else "fashion_mnist", limit=20_000 if quick else None)
    data = data.to(device)
    side = int(round(data.num_features**0.5))
    loss, evaluate = _classification(data, size.val)
    if name == "mlp":
        hidden = [32] if tiny else [256, 256]

        def make_model() -> nn.Module:
            return make_mlp(data.num_features, hidden, data.num_classes).to(device)

        title = (
            f"MLP {'-'.join(map(str, [data.num_features, *hidden, data.num_classes]))}, batch {size.batch}"
        )
    else:
        channels, width = ((4, 8), 16) if tiny else ((16, 32), 64)

        def make_model() -> nn.Module:
            return SmallCNN(side, data.num_classes, channels=channels, hidden=width).to(device)

        title = f"CNN 2×(conv3×3 + pool) {channels[0]}/{channels[1]} channels on {side}×{side}, batch {size.batch}"
    return _workload(
        size,
        device,
        make_model,
        name=name,
        title=title,
        data=data.name,
        note=f"{data.note}; validation = first {min(size.val, len(data.y_test))} test images",
        batches=_image_batches(data, size.steps, size.batch),
        loss=loss,
        evaluate=evaluate,
    )


def _char_lm(size: _Size, tiny: bool, device: torch.device, prefer: str = "auto") -> Workload:
    corpus = load_corpus("fallback" if tiny and prefer == "auto" else prefer)
    chars = encode_corpus(corpus, max_chars=200_000 if tiny else None)
    context, d_model, n_layer, n_head = (16, 16, 1, 2) if tiny else (64, 128, 2, 4)
    val_windows = 16 if tiny else size.val
    g = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, len(chars.val) - context - 1, (val_windows,), generator=g)
    val = torch.stack([chars.val[s : s + context + 1] for s in starts.tolist()]).to(device)

    def make_model() -> nn.Module:
        model = CharGPT(chars.vocab_size, context=context, d_model=d_model, n_layer=n_layer, n_head=n_head)
        return model.to(device)

    def lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate(model: nn.Module) -> tuple[float, float]:
        return float(lm_loss(model, val[:, :-1], val[:, 1:])), math.nan

    def batches(seed: int) -> list[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(10_000 + seed)
        offsets = torch.randint(0, len(chars.train) - context - 1, (size.steps, size.batch), generator=gen)
        out = []
        for row in offsets:
            windows = torch.stack([chars.train[s : s + context + 1] for s in row.tolist()]).to(device)
            out.append((windows[:, :-1], windows[:, 1:]))
        return out

    return _workload(
        size,
        device,
        make_model,
        name="char_lm",
        title=f"char GPT d{d_model} × {n_layer} layers, context {context}, batch {size.batch}",
        data=chars.name,
        note=f"{chars.note}; {len(chars.train):,} train / {len(chars.val):,} validation characters (the last 10 %), "
        f"vocabulary {chars.vocab_size}; validation = {val_windows} fixed windows of {context}",
        batches=batches,
        loss=lm_loss,
        evaluate=evaluate,
    )
