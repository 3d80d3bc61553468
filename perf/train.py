"""The training benchmark: the learning-rate grid, seeds, timing and state memory.

Protocol (the same for every optimizer on a workload):

1. **Grid.** Seed 0 is trained at every learning rate of the workload's grid; the best learning rate
   is the one with the lowest final validation loss (a diverged run counts as +∞). When the best
   lies at an edge of the grid, the grid is extended past that edge by the grid's own ratio
   (×3 or ÷3 for the default grids), up to ``extend_edges`` times, so an optimizer whose optimum
   lies outside the common grid is not judged at a learning rate that is merely the least bad.
2. **Seeds.** The best learning rate is trained again with seeds 1 … S−1, so every reported number
   is a mean over S seeds with its spread.
3. **Ablations** (tritonkron variants flagged ``ablation``) skip the grid when ``ablation_grid`` is
   off (quick mode) and run every seed at the learning rate chosen for ``"Kron logdet"``.

Seed ``s`` fixes the initial weights (``torch.manual_seed(s)`` before the model is built) and the
minibatch sequence, so at equal seeds every optimizer starts from the same weights and sees the
same batches. Each step is timed in two parts, forward + backward and ``opt.step()``, on the
workload's device (on CUDA the timer waits for the queued work at each mark, :func:`perf.device.clock`); the
validation passes are not timed and the cumulative training time at each evaluation is recorded
for loss-against-seconds plots. After the run, the optimizer state is measured in bytes.
Library code: progress goes to a callback, never to stdout.
The workloads themselves are built by :mod:`perf.train_workloads`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from perf.device import clock
from perf.peers import OptimizerEntry, precond_bytes, state_bytes
from perf.train_workloads import WORKLOADS, Workload, build_workload

__all__ = [
    "WORKLOADS",
    "RunRecord",
    "Workload",
    "build_workload",
    "run_benchmark",
    "run_one",
]

Progress = Callable[[str], None]


@dataclass
class RunRecord:
    """Outcome of one (workload, optimizer, learning rate, seed) run.

    ``curve`` rows are ``(step, train seconds so far, mean train loss since the last evaluation,
    val loss, val accuracy)``, starting at step 0.
    """

    workload: str
    optimizer: str
    lr: float
    seed: int
    phase: str
    steps_done: int
    diverged: bool
    final_val_loss: float
    best_val_loss: float
    final_val_acc: float
    best_val_acc: float
    step_ms_p50: float
    step_ms_p20: float
    step_ms_p80: float
    step_ms_mean: float
    first_step_ms: float
    fwd_bwd_ms_p50: float
    train_s: float
    state_bytes: int
    precond_bytes: int
    param_bytes: int
    wall_s: float
    curve: list[tuple[int, float, float, float, float]] = field(repr=False, default_factory=list)


def _quantile_ms(times: Sequence[float], q: float) -> float:
    if not times:
        return math.nan
    ordered = sorted(times)
    return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_one(
    workload: Workload, entry: OptimizerEntry, lr: float, seed: int, phase: str, batches: list
) -> RunRecord:
    """Train a fresh model with one optimizer, learning rate and seed (see the module docstring)."""
    assert entry.build is not None, entry.skip
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = workload.make_model()
    opt = entry.build(model, lr)
    val_loss, val_acc = workload.evaluate(model)
    curve = [(0, 0.0, math.nan, val_loss, val_acc)]
    step_times: list[float] = []
    fwd_bwd: list[float] = []
    window: list[float] = []
    train_s = 0.0
    diverged = False
    device = workload.device
    for step, (x, y) in enumerate(batches, start=1):
        t0 = clock(device)
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model, x, y)
        loss.backward()
        t1 = clock(device)
        opt.step()
        t2 = clock(device)
        fwd_bwd.append(t1 - t0)
        step_times.append(t2 - t1)
        train_s += t2 - t0
        window.append(float(loss.detach()))
        if not math.isfinite(window[-1]):
            diverged = True
        if diverged or step % workload.eval_every == 0 or step == len(batches):
            val_loss, val_acc = workload.evaluate(model)
            diverged = diverged or not math.isfinite(val_loss)
            curve.append((step, train_s, statistics.fmean(window), val_loss, val_acc))
            window = []
        if diverged:
            break
    losses = [c[3] for c in curve[1:] if math.isfinite(c[3])]
    accs = [c[4] for c in curve[1:] if math.isfinite(c[4])]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return RunRecord(
        workload=workload.name,
        optimizer=entry.label,
        lr=lr,
        seed=seed,
        phase=phase,
        steps_done=len(step_times),
        diverged=diverged,
        final_val_loss=math.nan if diverged else curve[-1][3],
        best_val_loss=min(losses) if losses else math.nan,
        final_val_acc=math.nan if diverged else curve[-1][4],
        best_val_acc=max(accs) if accs else math.nan,
        step_ms_p50=_quantile_ms(step_times, 0.5),
        step_ms_p20=_quantile_ms(step_times, 0.2),
        step_ms_p80=_quantile_ms(step_times, 0.8),
        # The first step allocates state (and runs tritonkron's initial eigendecompositions): a one-off
        # cost kept out of the steady-state mean and reported on its own.
        step_ms_mean=1e3 * statistics.fmean(step_times[1:]) if len(step_times) > 1 else math.nan,
        first_step_ms=1e3 * step_times[0] if step_times else math.nan,
        fwd_bwd_ms_p50=_quantile_ms(fwd_bwd, 0.5),
        train_s=train_s,
        state_bytes=state_bytes(opt),
        precond_bytes=precond_bytes(opt),
        param_bytes=param_bytes,
        wall_s=time.perf_counter() - started,
        curve=curve,
    )


def _score(record: RunRecord) -> float:
    return record.final_val_loss if math.isfinite(record.final_val_loss) else math.inf


def run_benchmark(
    workload: Workload,
    entries: Sequence[OptimizerEntry],
    seeds: int,
    ablation_grid: bool,
    ablation_seeds: int | None = None,
    on_record: Callable[[RunRecord], None] | None = None,
    progress: Progress | None = None,
    extend_edges: int = 1,
) -> list[RunRecord]:
    """Run the grid-then-seeds protocol for every runnable entry on one workload.

    Args:
        workload: the workload.
        entries: the optimizers (skipped entries are ignored here; the report lists them).
        seeds: seeds per optimizer at its best learning rate (≥ 1).
        ablation_grid: give ablation entries the whole grid too (otherwise they reuse the learning
            rate chosen for ``"Kron logdet"``, or the grid's middle value if it is absent).
        ablation_seeds: seeds of the ablation entries without a grid (default ``seeds``).
        on_record: called with each finished run (e.g. to append it to a CSV at once).
        progress: called with one line per finished run.
        extend_edges: how many extra learning rates may be tried past an edge of the grid while
            the best one lies there (0: the grid only).

    Returns:
        Every run, in execution order.
    """
    runnable = [e for e in entries if e.build is not None and not e.step_only]
    batches = {seed: workload.batches(seed) for seed in range(seeds)}
    plan_grid = [e for e in runnable if ablation_grid or not e.ablation]
    ablation_seeds = seeds if ablation_seeds is None else min(ablation_seeds, seeds)
    total = (
        len(plan_grid) * (len(workload.lrs) + seeds - 1) + (len(runnable) - len(plan_grid)) * ablation_seeds
    )
    records: list[RunRecord] = []
    started = time.perf_counter()

    def run(entry: OptimizerEntry, lr: float, seed: int, phase: str) -> RunRecord:
        record = run_one(workload, entry, lr, seed, phase, batches[seed])
        records.append(record)
        if on_record is not None:
            on_record(record)
        if progress is not None:
            done = len(records)
            eta = (time.perf_counter() - started) / done * (total - done)
            status = "diverged" if record.diverged else f"val loss {record.final_val_loss:.4f}"
            progress(
                f"[{workload.name} {done:>3}/{total}] {entry.label:<28} lr={lr:<7g} seed={seed} {status:<18} "
                f"step {record.step_ms_p50:7.1f} ms  ({record.wall_s:5.1f} s, ETA {eta:4.0f} s)"
            )
        return record

    best_lr: dict[str, float] = {}
    for entry in plan_grid:
        grid = [run(entry, lr * entry.lr_scale, 0, "grid") for lr in workload.lrs]
        best = min(grid, key=_score)
        for _ in range(extend_edges if len(grid) > 1 else 0):
            lrs = sorted(r.lr for r in grid)
            if best.lr not in (lrs[0], lrs[-1]) or not math.isfinite(_score(best)):
                break
            ratio = lrs[1] / lrs[0]
            grid.append(run(entry, lrs[-1] * ratio if best.lr == lrs[-1] else lrs[0] / ratio, 0, "grid"))
            best = min(grid, key=_score)
        best_lr[entry.label] = best.lr
        for seed in range(1, seeds):
            run(entry, best.lr, seed, "seed")
    fallback_lr = best_lr.get("Kron logdet", workload.lrs[len(workload.lrs) // 2])
    for entry in runnable:
        if entry not in plan_grid:
            for seed in range(ablation_seeds):
                run(entry, fallback_lr, seed, "ablation")
    return records
