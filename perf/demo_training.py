"""Training side of the demo (:mod:`perf.demo`): the optimizer configurations, the MLP and its runs.

Every configuration is trained from the same initial weights (:func:`make_mlp` after
``torch.manual_seed(seed)``) on the same minibatch sequence (:func:`batch_schedule`); only
``opt.step()`` is timed (:func:`train_run`). The MLP is built on the CPU and moved to the data's
device, so the initial weights are the same on every device; on CUDA the timer synchronises at both
ends of the step (:func:`perf.device.clock`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import tritonkron as tk
from perf.device import clock
from perf.workloads import Dataset

__all__ = [
    "BETAS",
    "EPS",
    "OptimizerFactory",
    "OptimizerSpec",
    "RunResult",
    "batch_schedule",
    "evaluate",
    "make_mlp",
    "optimizer_specs",
    "train_run",
]

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

BETAS = (0.9, 0.95)
EPS = 1e-8


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer configuration of the comparison.

    Attributes:
        label: row label in the tables.
        factory: builds the optimizer from ``(params, lr)``.
    """

    label: str
    factory: OptimizerFactory


@dataclass
class RunResult:
    """Outcome of training one configuration at one learning rate with one seed."""

    label: str
    lr: float
    seed: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    steps_done: int
    step_times: list[float] = field(repr=False)
    wall_s: float


def optimizer_specs(
    rank: int, precondition_every: int, tuning: str | os.PathLike[str] | None = None
) -> list[OptimizerSpec]:
    """The configurations compared: AdamW, Kron under each divergence, Kron in subspace mode and tuned.

    AdamW and Kron share betas, eps and (zero) weight decay so that only the preconditioner differs.

    Args:
        rank: the ``rank`` of the subspace-aware Kron configuration.
        precondition_every: Kron's basis refresh period.
        tuning: a tuning file; when given, ``Kron(rank="auto")`` and ``Kron(rank="auto",
            sketch=True)`` on it are added.

    Returns:
        The specifications, AdamW first.
    """

    def kron(**options: object) -> OptimizerFactory:
        def build(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
            return tk.Kron(
                params,
                lr=lr,
                betas=BETAS,
                eps=EPS,
                weight_decay=0.0,
                precondition_every=precondition_every,
                **options,  # type: ignore[arg-type]
            )

        return build

    def adamw(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0)

    specs = [
        OptimizerSpec("AdamW", adamw),
        OptimizerSpec("Kron logdet", kron(divergence="logdet")),
        OptimizerSpec("Kron von_neumann", kron(divergence="von_neumann")),
        OptimizerSpec("Kron frobenius", kron(divergence="frobenius")),
        OptimizerSpec(f"Kron logdet rank={rank}", kron(divergence="logdet", rank=rank, tail="mean")),
    ]
    if tuning is not None:
        specs += [
            OptimizerSpec("Kron logdet rank=auto", kron(divergence="logdet", rank="auto", tuning=tuning)),
            OptimizerSpec(
                "Kron logdet rank=auto sketch",
                kron(divergence="logdet", rank="auto", sketch=True, tuning=tuning),
            ),
        ]
    return specs


def make_mlp(num_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """A ReLU multilayer perceptron ``num_features → hidden… → num_classes``."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def batch_schedule(num_examples: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Minibatch indices for ``steps`` steps: shuffled epochs, identical for every optimizer.

    Args:
        num_examples: size of the training split.
        steps: number of minibatches.
        batch_size: examples per minibatch (capped at ``num_examples``).
        seed: seed of the shuffles.

    Returns:
        An int64 tensor of shape ``(steps, min(batch_size, num_examples))``.
    """
    batch_size = min(batch_size, num_examples)
    generator = torch.Generator().manual_seed(10_000 + seed)
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)
    orders = [
        torch.randperm(num_examples, generator=generator)[: per_epoch * batch_size] for _ in range(epochs)
    ]
    return torch.cat(orders).view(-1, batch_size)[:steps]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    logits = model(x)
    loss = float(F.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def train_run(
    data: Dataset,
    spec: OptimizerSpec,
    lr: float,
    seed: int,
    batches: torch.Tensor,
    hidden: Sequence[int],
) -> RunResult:
    """Train a fresh MLP with one configuration and report its final losses and step times.

    The model is trained on ``data``'s device (move the data there first, :meth:`Dataset.to`). A
    run whose minibatch loss becomes non-finite stops there and reports NaN losses.
    """
    start = time.perf_counter()
    device = data.x_train.device
    torch.manual_seed(seed)
    model = make_mlp(data.num_features, hidden, data.num_classes).to(device)
    opt = spec.factory(model.parameters(), lr)
    step_times: list[float] = []
    steps_done = 0
    diverged = False
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        loss.backward()
        t0 = clock(device)
        opt.step()
        step_times.append(clock(device) - t0)
        steps_done += 1
    model.eval()
    train_loss, _ = evaluate(model, data.x_train, data.y_train)
    test_loss, test_accuracy = evaluate(model, data.x_test, data.y_test)
    if diverged or not math.isfinite(train_loss):
        train_loss = test_loss = test_accuracy = math.nan
    return RunResult(
        label=spec.label,
        lr=lr,
        seed=seed,
        train_loss=train_loss,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        steps_done=steps_done,
        step_times=step_times,
        wall_s=time.perf_counter() - start,
    )
