"""Ablation of ``bound="adam"`` and ``bias_correction`` (docs/maths.md §5.5): ``python -m perf.bench_bounds``.

Three tables, each a pandas frame printed with tabulate (and written to ``--out`` as Markdown):

a. **Worst update.** Largest RMS(ΔW)/lr after a gradient moves to an orthogonal subspace (64 × 64)
   and for an embedding row whose first gradient comes after 200 silent steps
   (:mod:`perf.bounds_cases`), for AdamW and the Kron variants (full rank, rank 8, sketch).
b. **Early training.** A 16 → 32 → 4 tanh MLP regressing a random teacher of the same shape:
   32 steps of batch 32 at lr 1e-2, with a constant lr and with StepLR (×0.5 every 8 steps);
   held-out MSE, mean over ``--seeds`` seeds; AdamW, the Kron variants, the Adam-grafted warm
   start (``warm_start``, docs/maths.md §5.6), and the peers (Muon, SOAP and KLShampoo when
   heavyball is installed) with their own defaults.
c. **Learning-rate sensitivity.** The quick char-LM workload of the training benchmark
   (:func:`perf.train_workloads.build_workload`, CharGPT d128 × 2 on Shakespeare) for ``--lm-steps``
   steps at each lr of ``--lrs``, seed 0: final validation loss of AdamW, Muon (2-D matrices; AdamW
   on the rest), SOAP when heavyball is installed, and the Kron variants.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

import tritonkron as tk
from perf.bounds_cases import Builder, rare_row, subspace_switch, worst_update
from perf.peers import ADAMW_BETAS, OptimizerEntry, build_registry
from perf.train import build_workload, run_one

__all__ = [
    "EARLY_VARIANTS",
    "KRON_VARIANTS",
    "early_training",
    "lr_sensitivity",
    "main",
    "worst_updates_table",
]

KRON_VARIANTS: dict[str, dict[str, object]] = {
    "Kron off": {"bound": None, "bias_correction": False},
    "Kron bound": {"bound": "adam", "bias_correction": False},
    "Kron bias": {"bound": None, "bias_correction": True},
    "Kron bound+bias": {"bound": "adam", "bias_correction": True},
}
EARLY_VARIANTS: dict[str, dict[str, object]] = {
    "Kron warm16": {"warm_start": 16},
    "Kron warm32": {"warm_start": 32},
    "Kron warm16+bias": {"warm_start": 16, "bias_correction": True},
    "Kron warm32+bias": {"warm_start": 32, "bias_correction": True},
}


def _kron(**options: object) -> Builder:
    def build(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
        return tk.Kron(params, lr=lr, **options)  # type: ignore[arg-type]

    return build


def _adamw(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=ADAMW_BETAS, weight_decay=0.0)


def worst_updates_table() -> pd.DataFrame:
    """(a) worst RMS(ΔW)/lr per case and optimizer (lower is safer; AdamW is the reference)."""
    cases = [subspace_switch(), rare_row()]
    rows = [{"optimizer": "AdamW", **{c.name: worst_update(c, _adamw) for c in cases}}]
    forms = {"": {}, " r=8": {"rank": 8}, " r=8 sketch": {"rank": 8, "sketch": True}}
    for suffix, form in forms.items():
        for label, options in KRON_VARIANTS.items():
            if "bias" in label and suffix:
                continue  # bias correction does not act on the late steps these cases watch
            build = _kron(**form, **options)
            rows.append({"optimizer": label + suffix, **{c.name: worst_update(c, build) for c in cases}})
    return pd.DataFrame(rows).set_index("optimizer")


def _teacher_data(seed: int, count: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(10_000 + seed)
    W1, W2 = torch.randn(16, 32, generator=g) / 4, torch.randn(32, 4, generator=g) / math.sqrt(32)
    X = torch.randn(count, 16, generator=g)
    return X, torch.tanh(X @ W1) @ W2 + 0.05 * torch.randn(count, 4, generator=g)


ModelBuilder = Callable[[nn.Module, float], torch.optim.Optimizer]


def _on_params(build: Builder) -> ModelBuilder:
    return lambda model, lr: build(list(model.parameters()), lr)


def _mlp_run(build: ModelBuilder, seed: int, step_lr: bool, steps: int = 32, batch: int = 32) -> float:
    """Held-out MSE of a 16 → 32 → 4 tanh MLP after ``steps`` steps at lr 1e-2 (StepLR on every
    optimizer of a chained peer such as Muon + AdamW)."""
    X, Y = _teacher_data(seed, steps * batch + 512)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = build(model, 1e-2)
    parts = getattr(opt, "optimizers", [opt])
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=8, gamma=0.5) for o in parts] if step_lr else []
    for t in range(steps):
        x, y = X[t * batch : (t + 1) * batch], Y[t * batch : (t + 1) * batch]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        for sched in scheds:
            sched.step()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(X[-512:]), Y[-512:]))


def early_training(seeds: int) -> pd.DataFrame:
    """(b) held-out MSE after 32 steps, mean ± sd over seeds, constant lr and StepLR."""
    kron = {**KRON_VARIANTS, **EARLY_VARIANTS}
    builders = {"AdamW": _on_params(_adamw), **{k: _on_params(_kron(**v)) for k, v in kron.items()}}
    peers = {e.label: e for e in build_registry()}
    for label in ("Muon (fp32 NS)", "heavyball SOAP", "heavyball KLShampoo"):
        if label in peers and peers[label].build is not None:
            builders[label] = peers[label].build  # type: ignore[assignment]
    rows = []
    for label, build in builders.items():
        row: dict[str, object] = {"optimizer": label}
        for step_lr in (False, True):
            losses = [_mlp_run(build, s, step_lr) for s in range(seeds)]
            sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
            row["StepLR" if step_lr else "constant lr"] = f"{statistics.fmean(losses):.4f} ± {sd:.4f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("optimizer")


def _lm_entries() -> list[OptimizerEntry]:
    peers = {e.label: e for e in build_registry()}
    entries = [peers["AdamW"], peers["Muon (fp32 NS)"]]
    entries += [e for label, e in peers.items() if "SOAP" in label and e.build is not None]
    for label, options in KRON_VARIANTS.items():
        if label == "Kron bias":
            continue

        def build(model: nn.Module, lr: float, options: dict[str, object] = options) -> torch.optim.Optimizer:
            return tk.Kron(model.parameters(), lr=lr, precondition_every=10, **options)  # type: ignore[arg-type]

        entries.append(OptimizerEntry(label, "tritonkron", "tritonkron Kron", build))
    return entries


def lr_sensitivity(lrs: list[float], steps: int, progress: Callable[[str], None]) -> pd.DataFrame:
    """(c) final char-LM validation loss (NaN: diverged) per optimizer and lr, seed 0."""
    workload = build_workload("char_lm", quick=True)
    batches = workload.batches(0)
    while len(batches) < steps:  # the quick workload has 100 steps: continue with more seeds' batches
        batches += workload.batches(len(batches))
    batches = batches[:steps]
    rows = []
    for entry in _lm_entries():
        row: dict[str, object] = {"optimizer": entry.label}
        for lr in lrs:
            started = time.perf_counter()
            record = run_one(workload, entry, lr, 0, "grid", batches)
            row[f"lr {lr:g}"] = record.final_val_loss
            progress(
                f"{entry.label:<18} lr={lr:<7g} val {record.final_val_loss:.4f} ({time.perf_counter() - started:.0f} s)"
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("optimizer")


def main(argv: list[str] | None = None) -> None:
    """Run the chosen parts, print each table and write them all to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="abc", help="any of a, b, c")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the MLP regression (b)")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="char-LM learning rates (c)")
    parser.add_argument("--lm-steps", type=int, default=150, help="char-LM steps per run (c)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the tables")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    sections = []
    parts = {
        "a": ("(a) worst update RMS/lr", worst_updates_table),
        "b": (
            "(b) 16→32→4 MLP regression, 32 steps × 32, lr 1e-2: held-out MSE",
            lambda: early_training(args.seeds),
        ),
        "c": (
            f"(c) char-LM final validation loss, {args.lm_steps} steps × 16, seed 0",
            lambda: lr_sensitivity([float(x) for x in args.lrs.split(",")], args.lm_steps, print),
        ),
    }
    for key in args.parts:
        title, make = parts[key]
        started = time.perf_counter()
        table = make().to_markdown(floatfmt=".4g")
        sections.append(f"### {title}\n\n{table}\n")
        print(f"\n{title} ({time.perf_counter() - started:.0f} s)\n{table}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(sections))


if __name__ == "__main__":
    main()
