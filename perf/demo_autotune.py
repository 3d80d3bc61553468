"""The demo's autotune step: tune the demo MLP as ``python -m autotune`` would, and its report section.

:func:`autotune_demo` runs :func:`autotune.tune_model` on the demo MLP and writes the tuning file
that ``Kron(rank="auto", tuning=...)`` is then trained on; :func:`tuned_threads` reads the tuned
``cpu_threads`` knob; :func:`autotune_section` renders the tuner's per-shape summary as Markdown.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autotune.__main__ import summary_frame
from autotune.search import SearchOptions, TuneResult, tune_model
from perf.demo_tables import to_markdown
from perf.demo_training import make_mlp
from perf.workloads import Dataset

__all__ = ["autotune_demo", "autotune_section", "tuned_threads"]


def autotune_demo(
    data: Dataset,
    hidden: Sequence[int],
    out: Path,
    *,
    steps: int,
    batch_size: int,
    precondition_every: int,
    seed: int = 0,
) -> tuple[TuneResult, Path, float]:
    """Tune the demo MLP (as ``python -m autotune`` would) and write the tuning file to ``out``.

    The calibration trains a fresh MLP (seed ``seed``) on ``data``'s device (the device tuned for)
    for ``steps`` steps on random training batches; kernel configs are searched on CUDA only, and
    every CPU timing is a single call.

    Args:
        data: the demo data set.
        hidden: the MLP's hidden widths.
        out: the tuning file to write.
        steps: calibration steps (≥ 2).
        batch_size: calibration batch size.
        precondition_every: the refresh period T tuned for.
        seed: seed of the model and the calibration batches.

    Returns:
        (the tuner's result, the written path, seconds taken).
    """
    start = time.perf_counter()
    device = data.x_train.device
    torch.manual_seed(seed)
    model = make_mlp(data.num_features, hidden, data.num_classes).to(device)
    generator = torch.Generator().manual_seed(20_000 + seed)
    size = min(batch_size, data.x_train.shape[0])

    def loss_fn(m: nn.Module) -> torch.Tensor:
        idx = torch.randint(0, data.x_train.shape[0], (size,), generator=generator).to(device)
        return F.cross_entropy(m(data.x_train[idx]), data.y_train[idx])

    threads = torch.get_num_threads()
    try:
        opts = SearchOptions(steps=steps, precondition_every=precondition_every, cpu_reps=1, seed=seed)
        result = tune_model(model, loss_fn, opts)
    finally:
        torch.set_num_threads(threads)
    path = result.table.save(out)
    return result, path, time.perf_counter() - start


def tuned_threads(result: TuneResult) -> int:
    """The tuned ``cpu_threads`` knob of ``result`` (the current torch thread count when absent)."""
    knobs = [e.knobs.get("cpu_threads") for e in result.table.entries]
    counts = [k for k in knobs if isinstance(k, int) and not isinstance(k, bool) and k >= 1]
    return counts[0] if counts else torch.get_num_threads()


def autotune_section(result: TuneResult, path: Path, seconds: float) -> list[str]:
    """Markdown lines of the report's autotune section (the tuner's per-shape summary)."""
    losses = result.losses
    return [
        "## Autotune",
        "",
        f"`tune_model` (what `python -m autotune` runs) calibrated the MLP on {result.device} for "
        f"{len(losses)} steps (loss {losses[0]:.4g} → {losses[-1]:.4g}) and wrote `{path}` "
        f"(tuned for `{result.table.device}`) in {seconds:.0f} s. "
        'Per shape: block size and rank per factor for `rank="auto"`, and for `rank="auto", '
        "sketch=True` the ranks k, the sketch rank ℓ (capped) and the block size; predicted step "
        "times and state are measured on a stand-alone parameter of that shape.",
        "",
        to_markdown(summary_frame(result)),
        "",
    ]
