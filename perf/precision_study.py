"""Precision study: how much the TF32 and bf16 policies of the step's GEMMs change the optimizer.

``python -m perf.precision_study`` measures, for each precision policy of ``tk.Kron``
(``precision="ieee" | "tf32" | "bf16"``, docs/maths.md §11), on the gradients of the character-level
GPT of the training benchmark (:mod:`perf.train_workloads`, ``char_lm``, Shakespeare):

(a) the factors A, B after N EMA steps, (b) the top-k tracked eigenvalues and the top-k
eigenbases (largest principal angle) at step N, each block's basis refreshed within the last T
steps, (c) the preconditioned direction U of step N, each as a relative error against a float64
run of the same optimizer on the same gradients, and (d) the final validation loss of the quick
char-LM training run per policy at the same seeds, with the mean ``opt.step()`` time (on the CPU
the TF32 and bf16 roundings are extra work: the tensor cores that make them cheaper are a GPU's).

Protocol. One float32 IEEE run records the gradients of every matrix parameter for N steps;
the same gradients are then replayed into ``tk.Kron`` (lr = 1, ``stack=False``) on shadow
parameters, in float64 (the truth: float64 statistics ignore the policy) and in float32 under each
policy. The direction of step N is read as the update of parameters zeroed before that step.
The yardstick row ``drift over T`` is what the optimizer already tolerates: the float64 run's own
change over one refresh period T (factors, eigenvalues, the angle between consecutive refreshed
bases) and over one step (the direction).

On the CPU the step runs the ops' references: bf16 operands are real bfloat16 roundings (the
products are exact in float32 and summed in float32, as on the tensor cores); TF32 is emulated
by rounding the operands to TF32 (round to nearest even; a GPU may truncate, doubling the error).
The policy reaches the ops through the param group (``settings.precision``, passed by the step
to its GEMM ops); :func:`counting_roundings` checks that it did.
Writes ``perf/results/precision_<date>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

import tritonkron as tk
from autotune.provenance import git_commit
from perf.train_workloads import Workload, build_workload
from tritonkron.ops import precision as precision_ops
from tritonkron.state import BASIS_A, BASIS_B, BLOCKS, EIG_A, EIG_B, FACTOR_A, FACTOR_B

POLICIES = ("ieee", "tf32", "bf16")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "perf" / "results"


@dataclass(frozen=True)
class Settings:
    """The study's sizes: N replayed steps, refresh period T, top-k, training steps, seeds, lr."""

    steps: int = 50
    period: int = 10
    top_k: int = 8
    train_steps: int = 100
    seeds: int = 5
    lr: float = 1e-2
    tiny: bool = False


@dataclass(frozen=True)
class Snapshot:
    """One matrix parameter's statistics (block 0) and its direction, in float64."""

    factors: tuple[Tensor, Tensor]
    eigenvalues: tuple[Tensor, Tensor]
    bases: tuple[Tensor, Tensor]
    direction: Tensor | None


@contextlib.contextmanager
def counting_roundings() -> Iterator[list[int]]:
    """Counts the policy's operand roundings (``round_operands`` calls of the references) in the
    block, in a one-element list: zero means no op ran under a TF32 or bf16 policy."""
    counter = [0]
    rounding = precision_ops.round_operands

    def counted(*args: object) -> tuple[Tensor, ...]:
        counter[0] += 1
        return rounding(*args)

    precision_ops.round_operands = counted
    try:
        yield counter
    finally:
        precision_ops.round_operands = rounding


def _kron(params: list[Tensor], precision: str, lr: float, period: int) -> tk.Kron:
    return tk.Kron(params, lr=lr, precondition_every=period, stack=False, precision=precision)


def record_gradients(work: Workload, cfg: Settings) -> tuple[list[str], list[list[Tensor]]]:
    """Names of the matrix parameters and their gradients at each of the first N steps of a float32
    IEEE run (seed 0)."""
    torch.manual_seed(0)
    model = work.make_model()
    named = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    opt = _kron(list(model.parameters()), "ieee", cfg.lr, cfg.period)
    grads = []
    for x, y in work.batches(0)[: cfg.steps]:
        opt.zero_grad(set_to_none=True)
        work.loss(model, x, y).backward()
        grads.append([p.grad.detach().clone() for _, p in named])
        opt.step()
    return [n for n, _ in named], grads


def _snapshot(opt: tk.Kron, p: Tensor, direction: Tensor | None) -> Snapshot:
    block = opt.state[p][BLOCKS][0]
    f64 = [block[k][0].to(torch.float64) for k in (FACTOR_A, FACTOR_B, EIG_A, EIG_B, BASIS_A, BASIS_B)]
    return Snapshot((f64[0], f64[1]), (f64[2], f64[3]), (f64[4], f64[5]), direction)


def replay(grads: list[list[Tensor]], precision: str, dtype: torch.dtype, cfg: Settings,
           keep: Sequence[int]) -> dict[int, list[Snapshot]]:  # fmt: skip
    """Kron (lr = 1) on shadow parameters fed ``grads``; snapshots after the (1-based) steps ``keep``.

    The parameters are zeroed before each kept step, so that step's direction is minus the
    parameter after it."""
    params = [torch.zeros(g.shape, dtype=dtype, requires_grad=True) for g in grads[0]]
    opt = _kron(params, precision, 1.0, cfg.period)
    out: dict[int, list[Snapshot]] = {}
    with counting_roundings() as rounded:
        for step, step_grads in enumerate(grads, start=1):
            if step in keep:
                with torch.no_grad():
                    for p in params:
                        p.zero_()
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.to(dtype)
            opt.step()
            if step in keep:
                out[step] = [_snapshot(opt, p, -p.detach().to(torch.float64)) for p in params]
    if precision != "ieee" and dtype != torch.float64 and rounded[0] == 0:
        raise RuntimeError(f"the {precision} policy never reached the ops")
    return out


def _rel(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def _top_rel(x: Tensor, ref: Tensor, k: int) -> float:
    return float(((x[:k] - ref[:k]).abs() / ref[:k].abs().clamp_min(1e-300)).max())


def principal_angle(Q: Tensor, R: Tensor, k: int) -> float:
    """Largest principal angle, in degrees, between the spans of the first k columns of Q and R."""
    cosines = torch.linalg.svdvals(Q[:, :k].T @ R[:, :k]).clamp(max=1.0)
    return math.degrees(math.acos(float(cosines.min())))


def layer_errors(
    got: Snapshot, ref: Snapshot, k: int, direction_ref: Tensor | None = None
) -> dict[str, float]:
    """(a)–(c) of one layer: relative errors of A, B, the top-k eigenvalues (worse side), the
    largest top-k principal angle (worse side) and of the direction."""
    U_ref = ref.direction if direction_ref is None else direction_ref
    return {
        "A": _rel(got.factors[0], ref.factors[0]),
        "B": _rel(got.factors[1], ref.factors[1]),
        "top-k eig": max(_top_rel(g, r, k) for g, r in zip(got.eigenvalues, ref.eigenvalues, strict=True)),
        "angle °": max(principal_angle(g, r, k) for g, r in zip(got.bases, ref.bases, strict=True)),
        "U": _rel(got.direction, U_ref),
    }


def measure_statistics(grads: list[list[Tensor]], cfg: Settings) -> dict[str, list[dict[str, float]]]:
    """(a)–(c) per layer for each policy, and the float64 run's drift over one period (yardstick)."""
    N, T = len(grads), cfg.period
    truth = replay(grads, "ieee", torch.float64, cfg, keep=(N - T, N - 1, N))
    errors: dict[str, list[dict[str, float]]] = {}
    for precision in POLICIES:
        got = replay(grads, precision, torch.float32, cfg, keep=(N,))[N]
        errors[precision] = [layer_errors(g, r, cfg.top_k) for g, r in zip(got, truth[N], strict=True)]
    drift = zip(truth[N - T], truth[N], truth[N - 1], strict=True)
    errors[f"drift over T={T} (float64)"] = [layer_errors(a, b, cfg.top_k, c.direction) for a, b, c in drift]
    return errors


def statistics_table(errors: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    """One row per policy (and the drift row): median and max of each metric over the layers."""
    rows = []
    for label, layers in errors.items():
        row: dict[str, object] = {"policy": label}
        for metric in layers[0]:
            values = [layer[metric] for layer in layers]
            row[f"{metric} median"] = statistics.median(values)
            row[f"{metric} max"] = max(values)
        rows.append(row)
    return pd.DataFrame(rows)


def layer_table(names: list[str], grads: list[list[Tensor]], errors: dict[str, list[dict[str, float]]],
                precision: str = "bf16") -> pd.DataFrame:  # fmt: skip
    """Every metric per matrix parameter for one policy (default bf16, the coarsest)."""
    rows = []
    for name, g, layer in zip(names, grads[0], errors[precision], strict=True):
        rows.append({f"layer ({precision})": name, "shape": "×".join(map(str, g.shape)), **layer})
    return pd.DataFrame(rows)


def final_loss(work: Workload, precision: str, seed: int, cfg: Settings) -> tuple[float, float]:
    """Final validation loss of one training run (quick char-LM budget) under ``precision``, and
    the mean ``opt.step()`` time in ms (the first step, which initialises the blocks, left out)."""
    torch.manual_seed(seed)
    model = work.make_model()
    opt = _kron(list(model.parameters()), precision, cfg.lr, cfg.period)
    times = []
    with counting_roundings() as rounded:
        for x, y in work.batches(seed)[: cfg.train_steps]:
            opt.zero_grad(set_to_none=True)
            work.loss(model, x, y).backward()
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
    if precision != "ieee" and rounded[0] == 0:
        raise RuntimeError(f"the {precision} policy never reached the ops")
    return work.evaluate(model)[0], 1e3 * statistics.fmean(times[1:] or times)


def training_table(work: Workload, cfg: Settings) -> pd.DataFrame:
    """(d): final validation loss per policy and seed, their mean, the difference to ieee and the
    mean CPU step time."""
    runs = {p: [final_loss(work, p, seed, cfg) for seed in range(cfg.seeds)] for p in POLICIES}
    base = statistics.fmean(loss for loss, _ in runs["ieee"])
    rows = []
    for precision, results in runs.items():
        values = [loss for loss, _ in results]
        spread = statistics.stdev(values) if len(values) > 1 else math.nan
        row = {"policy": precision, **{f"seed {s}": v for s, v in enumerate(values)}}
        row |= {
            "mean": statistics.fmean(values),
            "std": spread,
            "mean − ieee": statistics.fmean(values) - base,
            "CPU step ms": statistics.fmean(ms for _, ms in results),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _header(work: Workload, cfg: Settings, names: list[str]) -> list[str]:
    commit = git_commit(ROOT) or "unknown"
    return [
        f"# Precision policy study, {date.today().isoformat()}",
        "",
        f"`python -m perf.precision_study` at commit {commit[:12]} (torch {torch.__version__}, "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads). Workload: {work.title}; {work.note}.",
        f"Statistics (a)–(c): {len(names)} matrix parameters, gradients of the first {cfg.steps} steps "
        f"of a float32 IEEE run (lr {cfg.lr}, seed 0), replayed with T = {cfg.period}, top-k = {cfg.top_k}; "
        "relative errors against the float64 replay (median and max over the parameters).",
        f"Training (d): {cfg.train_steps} steps, lr {cfg.lr}, seeds 0–{cfg.seeds - 1}, final validation loss.",
        "",
        "CPU arithmetic: bf16 operands are real bfloat16 roundings with exact products and float32 sums "
        "(as on the tensor cores); **TF32 is emulated** by rounding the operands to TF32 (round to "
        "nearest even; GPU tensor cores may truncate, up to twice the error).",
        "",
    ]


def run(cfg: Settings, out: Path | None) -> str:
    """Run the study, print and return the Markdown report (also written to ``out`` if given).

    Runs on one CPU thread: multi-threaded LAPACK on a shared, oversubscribed machine can take
    seconds for one 512 × 512 eigendecomposition (the step's initialisation) instead of ~30 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Settings, out: Path | None) -> str:
    work = build_workload("char_lm", quick=True, tiny=cfg.tiny)
    names, grads = record_gradients(work, cfg)
    errors = measure_statistics(grads, cfg)
    tables = {
        "(a)–(c) statistics and direction, relative to float64": statistics_table(errors),
        "(a)–(c) per layer, bf16": layer_table(names, grads, errors),
        "(d) char-LM final validation loss": training_table(work, cfg),
    }
    lines = _header(work, cfg, names)
    for title, frame in tables.items():
        lines += [f"## {title}", "", frame.to_markdown(index=False, floatfmt=".3g"), ""]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m perf.precision_study [--steps N] [--seeds S] [--out PATH]``."""
    parser = argparse.ArgumentParser(
        prog="python -m perf.precision_study", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=Settings.steps, help="replayed steps N (default 50)")
    parser.add_argument("--train-steps", type=int, default=Settings.train_steps, help="training steps (100)")
    parser.add_argument("--seeds", type=int, default=Settings.seeds, help="training seeds (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS / f"precision_{date.today().isoformat()}.md")
    args = parser.parse_args(argv)
    run(Settings(steps=args.steps, train_steps=args.train_steps, seeds=args.seeds), args.out)


if __name__ == "__main__":
    main()
