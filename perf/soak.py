"""Long-run soak: thousands of steps with injected non-finite gradients and forced refresh failures.

Usage (from the repository root)::

    python -m perf.soak [--steps 3000] [--nan-rate 0.01] [--fail-every 50] [--device auto|cpu|cuda]
                        [--out perf/results/soak.md]

Workload: an MLP 64-64-32-10 on scikit-learn's bundled ``load_digits`` (real 8 × 8 handwritten
digits; train on the first 1500, evaluate on the rest), minibatches of 64. Three runs from the same
weights and batches:

* ``Kron (faults)``: ``tk.Kron`` (logdet, ``precondition_every=5``) where a random ``--nan-rate`` of the
  steps gets a NaN or Inf written into one parameter's gradient, and a random 1 in ``--fail-every`` basis
  refresh returns NaN bases (as a failed QR would);
* ``Kron (clean)``: the same optimizer and batches without faults;
* ``AdamW``: ``torch.optim.AdamW`` on the clean batches.

Reported: whether training reached the end, steps skipped (sum of ``skipped_steps``), refresh
failures injected, whether any parameter became non-finite, and final train/test loss and accuracy.
The runs live on ``--device`` (default ``auto``: CUDA when available, else the CPU); the batches
and injected faults are drawn on the CPU, so they are the same on every device. Written as
Markdown (pandas + tabulate, with the device, machine, versions and date) and CSV next to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import tritonkron as tk
import tritonkron.step.dense as preconditioner
from perf.device import add_device_argument, describe_device
from tritonkron.math.basis import Eigenpairs

RESULTS = Path(__file__).resolve().parent / "results"


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    return x[:1500], y[:1500], x[1500:], y[1500:]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


class _FailingRefresh:
    """Wraps the refresh's subspace iteration so that a call returns NaN bases with probability
    1/``every`` (seeded; a fixed period would hit the same blocks of a staggered refresh schedule)."""

    def __init__(self, every: int, seed: int = 0) -> None:
        self.every, self.calls, self.failed = every, 0, 0
        self.original = preconditioner.subspace_iteration
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, X: torch.Tensor, Q: torch.Tensor, steps: int = 1, method: str = "householder"
    ) -> Eigenpairs:
        self.calls += 1
        result = self.original(X, Q, steps, method)
        if self.every and torch.randint(self.every, (), generator=self.generator) == 0:
            self.failed += 1
            nan = torch.full_like(result.vectors, float("nan"))
            return Eigenpairs(nan[..., 0, :], nan)
        return result


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def run(
    label: str, steps: int, nan_rate: float, fail_every: int, device: torch.device | str = "cpu"
) -> dict[str, object]:
    """One soak run on ``device``; faults only when ``nan_rate`` > 0 or ``fail_every`` > 0."""
    x, y, x_test, y_test = (t.to(device) for t in _data())
    model = _model().to(device)
    params = list(model.parameters())
    if label == "AdamW":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=3e-3)
    else:
        opt = tk.Kron(params, lr=3e-3, precondition_every=5)
    failing = _FailingRefresh(fail_every)
    preconditioner.subspace_iteration = failing
    gen = torch.Generator().manual_seed(1)
    injected = 0
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=gen).to(device)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            if nan_rate and float(torch.rand((), generator=gen)) < nan_rate:
                victim = params[int(torch.randint(0, len(params), (), generator=gen))]
                victim.grad.view(-1)[0] = float("nan") if injected % 2 == 0 else float("inf")
                injected += 1
            opt.step()
    finally:
        preconditioner.subspace_iteration = failing.original
    train_loss, train_acc = _evaluate(model, x, y)
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    skipped = sum(int(s.get("skipped_steps", 0)) for s in opt.state.values()) if label != "AdamW" else 0
    return {
        "run": label,
        "steps": steps,
        "completed": True,
        "non-finite grads injected": injected,
        "param steps skipped": skipped,
        "refresh failures injected": failing.failed,
        "all params finite": all(bool(torch.isfinite(p).all()) for p in params),
        "train loss": train_loss,
        "test loss": test_loss,
        "test acc %": 100 * test_acc,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--nan-rate", type=float, default=0.01)
    parser.add_argument("--fail-every", type=int, default=50)
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.md")
    args = parser.parse_args(argv)
    if args.steps < 1 or not 0 <= args.nan_rate < 1 or args.fail_every < 0:
        parser.error("--steps must be >= 1, --nan-rate in [0, 1), --fail-every >= 0")
    rows = [
        run("Kron (faults)", args.steps, args.nan_rate, args.fail_every, args.device),
        run("Kron (clean)", args.steps, 0.0, 0, args.device),
        run("AdamW", args.steps, 0.0, 0, args.device),
    ]
    table = pd.DataFrame(rows)
    header = (
        f"# Soak run\n\n{dt.date.today().isoformat()}, device {describe_device(args.device)}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, tritonkron {tk.__version__}; "
        f"`python -m perf.soak --steps {args.steps} --nan-rate {args.nan_rate} --fail-every {args.fail_every} "
        f"--device {args.device.type}`; "
        "MLP 64-64-32-10 on scikit-learn digits, batch 64, lr 3e-3, Kron logdet with refresh every 5 steps.\n\n"
    )
    text = header + table.to_markdown(index=False, floatfmt=".4g") + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
