"""The training benchmark: workloads, the learning-rate grid, seeds, timing and state memory.

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
same batches. Each step is timed in two parts, forward + backward and ``opt.step()``; the
validation passes are not timed and the cumulative training time at each evaluation is recorded
for loss-against-seconds plots. After the run, the optimizer state is measured in bytes.
Library code: progress goes to a callback, never to stdout.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perf.demo_training import make_mlp
from perf.models import CharGPT, SmallCNN, count_parameters
from perf.peers import OptimizerEntry, precond_bytes, state_bytes
from perf.text import encode_corpus, load_corpus
from perf.workloads import Dataset, load_image_classification

__all__ = [
    "WORKLOADS",
    "RunRecord",
    "Workload",
    "build_workload",
    "run_benchmark",
    "run_one",
]

WORKLOADS = ("char_lm", "mlp", "cnn")

Progress = Callable[[str], None]


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
        schedule = batch_schedule(data.x_train.shape[0], steps, batch_size, seed)
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


def build_workload(name: str, quick: bool, tiny: bool = False) -> Workload:
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

    Returns:
        The workload.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")
    size = _TINY if tiny else _SIZES[name][0 if quick else 1]
    if name == "char_lm":
        return _char_lm(size, tiny)
    data = load_image_classification("digits" if tiny else "fashion_mnist", limit=20_000 if quick else None)
    side = int(round(data.num_features**0.5))
    loss, evaluate = _classification(data, size.val)
    if name == "mlp":
        hidden = [32] if tiny else [256, 256]

        def make_model() -> nn.Module:
            return make_mlp(data.num_features, hidden, data.num_classes)

        title = (
            f"MLP {'-'.join(map(str, [data.num_features, *hidden, data.num_classes]))}, batch {size.batch}"
        )
    else:
        channels, width = ((4, 8), 16) if tiny else ((16, 32), 64)

        def make_model() -> nn.Module:
            return SmallCNN(side, data.num_classes, channels=channels, hidden=width)

        title = f"CNN 2×(conv3×3 + pool) {channels[0]}/{channels[1]} channels on {side}×{side}, batch {size.batch}"
    torch.manual_seed(0)
    return Workload(
        name=name,
        title=title,
        data=data.name,
        note=f"{data.note}; validation = first {min(size.val, len(data.y_test))} test images",
        make_model=make_model,
        batches=_image_batches(data, size.steps, size.batch),
        loss=loss,
        evaluate=evaluate,
        steps=size.steps,
        eval_every=max(1, size.steps // size.evals),
        lrs=size.lrs,
        params=count_parameters(make_model()),
    )


def _char_lm(size: _Size, tiny: bool) -> Workload:
    corpus = load_corpus("fallback" if tiny else "auto")
    chars = encode_corpus(corpus, max_chars=200_000 if tiny else None)
    context, d_model, n_layer, n_head = (16, 16, 1, 2) if tiny else (64, 128, 2, 4)
    val_windows = 16 if tiny else size.val
    g = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, len(chars.val) - context - 1, (val_windows,), generator=g)
    val = torch.stack([chars.val[s : s + context + 1] for s in starts.tolist()])

    def make_model() -> nn.Module:
        return CharGPT(chars.vocab_size, context=context, d_model=d_model, n_layer=n_layer, n_head=n_head)

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
            windows = torch.stack([chars.train[s : s + context + 1] for s in row.tolist()])
            out.append((windows[:, :-1], windows[:, 1:]))
        return out

    torch.manual_seed(0)
    return Workload(
        name="char_lm",
        title=f"char GPT d{d_model} × {n_layer} layers, context {context}, batch {size.batch}",
        data=chars.name,
        note=f"{chars.note}; {len(chars.train):,} train / {len(chars.val):,} validation characters (the last 10 %), "
        f"vocabulary {chars.vocab_size}; validation = {val_windows} fixed windows of {context}",
        make_model=make_model,
        batches=batches,
        loss=lm_loss,
        evaluate=evaluate,
        steps=size.steps,
        eval_every=max(1, size.steps // size.evals),
        lrs=size.lrs,
        params=count_parameters(make_model()),
    )


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
    for step, (x, y) in enumerate(batches, start=1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model, x, y)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
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
