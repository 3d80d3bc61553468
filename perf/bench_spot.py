"""Spot checks behind README statements: the default β₂, the 1000-step comparison, the update-RMS cap.

Usage (from the repository root)::

    python -m perf.bench_spot --study betas     # ~3 min on 2 cores
    python -m perf.bench_spot --study long      # ~25 min on 2 cores
    python -m perf.bench_spot --study clip      # ~16 min on 2 cores
    python -m perf.bench_spot --study betas --device cuda   # (default --device auto: CUDA when available)

Not the benchmark protocol of ``python -m perf train`` (no grid search, no edge extension): each
study trains a fixed list of (configuration, learning rate, seed) runs with :func:`perf.train.run_one`,
on the same initial weights and batches per seed, and prints one row per run:

- ``betas``: tritonkron's default β₂ = 0.95 against the earlier 0.98 (and AdamW with both) on the
  quick-size workloads, seeds 0 and 1 (char LM at lr 0.01 / AdamW 1e-3; MLP and CNN at 3e-3 and 1e-2).
- ``long``: the character-level GPT at the full size (1000 steps, batch 32), seed 0: AdamW, Muon,
  heavyball SOAP (when installed), Kron at both β₂ and with ``block_size=128``, two or three
  learning rates each.
- ``clip``: the same full-size GPT, seeds 0–2, Kron (default blocks at lr 1e-3, ``block_size=128``
  at 3e-3: the full protocol's best lrs) with and without ``max_update_rms=1``; seed 2 is the run
  whose loss spiked near step 737 in the full protocol.

The table is printed (pandas + tabulate) and appended to ``perf/results/spot.csv`` with the
device, commit and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import tritonkron as tk
from perf.__main__ import append_csv
from perf.check_env import git_commit
from perf.device import add_device_argument, describe_device
from perf.peers import PRECONDITION_EVERY, OptimizerEntry, build_registry
from perf.train import run_one
from perf.train_workloads import build_workload

RESULTS = Path(__file__).resolve().parent / "results"

Builder = Callable[[nn.Module, float], torch.optim.Optimizer]
Run = tuple[str, str, float, int]  # (workload, configuration label, lr, seed)


def _kron(**options: object) -> Builder:
    def build(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return tk.Kron(model.parameters(), lr=lr, precondition_every=PRECONDITION_EVERY, **options)  # type: ignore[arg-type]

    return build


def _adamw(betas: tuple[float, float]) -> Builder:
    def build(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=0.0)

    return build


def configurations() -> dict[str, OptimizerEntry]:
    """The configurations the studies use, by label (peers from :func:`perf.peers.build_registry`)."""
    own = {
        "Kron logdet β₂=0.95": _kron(betas=(0.9, 0.95)),
        "Kron logdet β₂=0.98": _kron(betas=(0.9, 0.98)),
        "Kron logdet β₂=0.95 b=128": _kron(betas=(0.9, 0.95), block_size=128),
        "Kron logdet b=128 max_update_rms=1": _kron(block_size=128, max_update_rms=1.0),
        "Kron logdet max_update_rms=1": _kron(max_update_rms=1.0),
        "AdamW β₂=0.95": _adamw((0.9, 0.95)),
        "AdamW β₂=0.98": _adamw((0.9, 0.98)),
    }
    entries = {label: OptimizerEntry(label, "spot", label, build) for label, build in own.items()}
    for entry in build_registry():
        if entry.label in ("Muon (fp32 NS)", "heavyball SOAP"):
            entries[entry.label] = entry
    return entries


def study_runs(study: str) -> list[Run]:
    """The (workload, label, lr, seed) runs of ``study`` (module docstring)."""
    if study == "betas":
        runs = [
            ("char_lm", f"{opt} β₂={b}", lr, seed)
            for opt, lr in (("Kron logdet", 1e-2), ("AdamW", 1e-3))
            for b in ("0.95", "0.98")
            for seed in (0, 1)
        ]
        runs += [
            (wl, f"Kron logdet β₂={b}", lr, seed)
            for wl in ("mlp", "cnn")
            for lr in (3e-3, 1e-2)
            for b in ("0.95", "0.98")
            for seed in (0, 1)
        ]
        return runs
    if study == "long":
        plan = {
            "AdamW β₂=0.95": (1e-3, 3e-3),
            "Muon (fp32 NS)": (3e-3, 1e-2),
            "heavyball SOAP": (1e-3, 3e-3),
            "Kron logdet β₂=0.95": (3e-3, 5e-3, 1e-2),
            "Kron logdet β₂=0.98": (5e-3, 1e-2),
            "Kron logdet β₂=0.95 b=128": (3e-3, 5e-3, 1e-2),
        }
        return [("char_lm", label, lr, 0) for label, lrs in plan.items() for lr in lrs]
    if study == "clip":
        plan = {
            "Kron logdet β₂=0.95 b=128": 3e-3,
            "Kron logdet b=128 max_update_rms=1": 3e-3,
            "Kron logdet β₂=0.95": 1e-3,
            "Kron logdet max_update_rms=1": 1e-3,
        }
        return [("char_lm", label, lr, seed) for label, lr in plan.items() for seed in (0, 1, 2)]
    raise ValueError(f"study must be 'betas', 'long' or 'clip'; got {study!r}")


def run_study(
    study: str, runs: list[Run] | None = None, tiny: bool = False, device: torch.device | str = "cpu"
) -> pd.DataFrame:
    """Train every run of ``study`` (or ``runs``) on ``device``; one row per run. ``tiny`` is the test size."""
    entries = configurations()
    full = study in ("long", "clip")
    workloads, batches, rows = {}, {}, []
    for wl, label, lr, seed in study_runs(study) if runs is None else runs:
        entry = entries.get(label)
        if entry is None or entry.build is None:
            print(f"skipped {label}: not installed", flush=True)
            continue
        if wl not in workloads:
            workloads[wl] = build_workload(wl, quick=not full, tiny=tiny, device=device)
        if (wl, seed) not in batches:
            batches[wl, seed] = workloads[wl].batches(seed)
        r = run_one(workloads[wl], entry, lr, seed, study, batches[wl, seed])
        rows.append(
            {
                "study": study,
                "workload": wl,
                "steps": r.steps_done,
                "configuration": label,
                "lr": lr,
                "seed": seed,
                "final val loss": r.final_val_loss,
                "best val loss": r.best_val_loss,
                "step ms mean": r.step_ms_mean,
                "fwd+bwd ms p50": r.fwd_bwd_ms_p50,
            }
        )
        print(f"{wl} {label} lr={lr:g} seed={seed}: final val loss {r.final_val_loss:.4f}", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("betas", "long", "clip"), required=True)
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=RESULTS / "spot.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    device = describe_device(args.device)
    print(f"device: {device}", flush=True)
    table = run_study(args.study, device=args.device)
    print(table.to_markdown(index=False, floatfmt=".4g"))
    table["device"] = device
    table["commit"] = git_commit()
    table["timestamp"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    append_csv(args.out, table.to_dict("records"))  # a file started before a new column gets the union
    print(f"appended {len(table)} rows to {args.out}")


if __name__ == "__main__":
    main()
