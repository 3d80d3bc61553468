"""End-to-end section of ``python -m perf.gpu_check``: whole training steps of a GPT-2-small-shaped model.

The model is :class:`perf.models.CharGPT` with the shape of :data:`perf.shapes.GPT2_SMALL`
(12 layers × 768, 12 heads of 64, the vocabulary padded to a multiple of 64: 50304, the LM head
tied to the token embedding), trained on random tokens (:data:`BATCH_POOL` batches of
8 × 1024 cycled) with bfloat16 autocast and float32 parameters. Every optimizer starts from the
same initial weights:

- ``AdamW``: ``torch.optim.AdamW(fused=True)``;
- ``Muon + AdamW``: ``torch.optim.Muon`` (it takes 2-D parameters only) on the hidden matrices
  (:func:`perf.peers.muon_split`: embeddings and the head excluded) with
  ``adjust_lr_fn="match_rms_adamw"``, fused AdamW on everything else; skipped, with the reason,
  where torch has no ``torch.optim.Muon``;
- ``heavyball SOAP``: eager (:func:`perf.peers.heavyball_eager`), ``precondition_frequency=10``;
  skipped, with the reason, where heavyball cannot be imported;
- ``tk.Kron`` with its defaults, ``block_size=256``, ``rank=64`` and ``rank=64, sketch=True``
  (``precondition_every=10``), run with ``TRITONKRON_BACKEND=triton`` on CUDA (and under the
  Triton interpreter on CPU), so that every op takes the Triton path or says why not.

Per optimizer: the first ``opt.step()`` in seconds of wall time (compile and autotune included),
then untimed warm-up steps, then timed steps: median, mean and max ms of ``opt.step()`` (CUDA
events around it; ``time.perf_counter`` on CPU) and the median of forward + backward; optimizer
state bytes per parameter byte (:func:`autotune.measure.state_bytes` over ``opt.state``), the loss
of the last step, and for the Kron rows the number of :class:`KernelFallbackWarning` s and the ops
the kernel guard disabled (the guard is reset before each row, so each row counts its own).

Time bounds: each optimizer stops early once it has run longer than the per-optimizer cap
(warm-up is cut first; at least ``min_steps`` timed steps are kept) and says so in its status; an
optimizer that would start after the section budget is spent is skipped and listed.

Modes (:func:`make_e2e_plan`): ``quick`` 10 warm-up + 30 timed steps, cap 25 s, budget 150 s;
``full`` 10 + 50, cap 90 s, budget 600 s; ``cpu-interpret`` the ``tiny`` model of
:mod:`perf.shapes` (block size 16, rank 4), batch 2 × 16, 0 + 1 steps.

Output: the table printed and in the Markdown summary, rows appended to ``gpu_check_e2e.csv``
(columns :data:`E2E_COLUMNS`).
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perf import peers, shapes
from perf.check_env import backend_env, sync
from perf.check_plan import Plan
from perf.check_report import CSV_FILES, Report, append_csv, fmt
from perf.gpu_e2e_entries import LR, MUON_LR, E2EEntry, e2e_entries
from perf.models import CharGPT
from perf.shapes import ModelShapes
from tritonkron import options
from tritonkron.ops import kernel_guard

__all__ = ["E2E_COLUMNS", "E2EPlan", "build_model", "make_e2e_plan", "run_e2e"]

HEAD_DIM = 64  # GPT-2's attention head width
VOCAB_MULTIPLE = 64  # the embedding rows are padded to a multiple of this (50257 → 50304)
BATCH_POOL = 4  # distinct random batches cycled through
MIN_ROW_S = 2.0  # an optimizer is not started with less of the section budget left
# fmt: off
E2E_COLUMNS = [
    "optimizer", "source", "backend", "lr", "status", "warmup_steps", "timed_steps", "step_ms_median",
    "step_ms_mean", "step_ms_max", "fwd_bwd_ms_median", "first_step_s", "state_bytes", "param_bytes",
    "state_per_param_byte", "final_loss", "kernel_fallbacks", "disabled_ops", "model", "batch", "seq_len",
    "autocast", "gpu_name", "torch", "triton", "git_commit", "timestamp", "note",
]
# fmt: on


@dataclass(frozen=True)
class E2EPlan:
    """Model, batch and step counts of the section (see :func:`make_e2e_plan`)."""

    model: ModelShapes
    seq_len: int
    batch: int
    autocast: bool
    warmup: int
    steps: int
    min_steps: int
    cap_s: float
    budget_s: float
    block_size: int
    rank: int

    @property
    def n_head(self) -> int:
        """Attention heads: ``d_model / 64``, at least one."""
        return max(1, self.model.d_model // HEAD_DIM)

    @property
    def vocab(self) -> int:
        """Token ids drawn: the rows of the model's embedding layer (``wte``)."""
        return self.model.layer("wte").rows

    @property
    def padded_vocab(self) -> int:
        """Embedding rows: :attr:`vocab` rounded up to a multiple of :data:`VOCAB_MULTIPLE`."""
        return -(-self.vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def make_e2e_plan(mode: str, budget_s: float | None = None) -> E2EPlan:
    """The plan of ``mode`` ("full", "quick" or "cpu-interpret"); ``budget_s`` overrides its budget."""
    if mode == "cpu-interpret":
        plan = E2EPlan(shapes.TINY, 16, 2, False, 0, 1, 1, 60.0, 300.0, shapes.TINY_BLOCK_SIZE, 4)
    elif mode == "quick":
        plan = E2EPlan(shapes.GPT2_SMALL, 1024, 8, True, 10, 30, 3, 25.0, 150.0, 256, 64)
    else:
        plan = E2EPlan(shapes.GPT2_SMALL, 1024, 8, True, 10, 50, 3, 90.0, 600.0, 256, 64)
    return plan if budget_s is None else replace(plan, budget_s=budget_s)


def build_model(e2e: E2EPlan, device: str) -> nn.Module:
    """The GPT-style model of the plan on ``device``, its LM head tied to the token embedding."""
    d = e2e.model
    with torch.device(device):
        model = CharGPT(e2e.padded_vocab, e2e.seq_len, d.d_model, d.n_layer, e2e.n_head)
    model.head.weight = model.tok_emb.weight
    return model


# ---------------------------------------------------------------------------------------------
# One optimizer's run
# ---------------------------------------------------------------------------------------------


class _Timer:
    """Marks on the device's timeline: CUDA events on CUDA, ``time.perf_counter`` elsewhere."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def mark(self) -> Any:
        """A point in time (an event recorded on the current stream, or a float)."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start: Any, end: Any) -> float:
        """Milliseconds from ``start`` to ``end`` (after the device has finished both)."""
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


@dataclass
class _Run:
    """What one optimizer's steps share."""

    model: nn.Module
    opt: torch.optim.Optimizer | peers.Chain
    batches: list[tuple[Tensor, Tensor]]
    device: str
    autocast: bool
    timer: _Timer
    steps_done: int = 0
    loss: Tensor | None = None

    def step(self, first: bool = False) -> tuple[float, float, float]:
        """One forward, backward and ``opt.step()``: (forward + backward ms, step ms, step wall s).

        The wall time counts from a synchronisation only when ``first`` (the first step's time)."""
        x, y = self.batches[self.steps_done % len(self.batches)]
        self.opt.zero_grad(set_to_none=True)
        t0 = self.timer.mark()
        amp = torch.autocast(self.device, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with amp:
            loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        loss.backward()
        t1 = self.timer.mark()
        if first:
            sync(self.device)
        wall = time.perf_counter()
        self.opt.step()
        t2 = self.timer.mark()
        sync(self.device)
        wall = time.perf_counter() - wall
        self.steps_done += 1
        self.loss = loss.detach()
        return self.timer.ms(t0, t1), self.timer.ms(t1, t2), wall

    def run(self, n: int, keep: int, deadline: float) -> list[tuple[float, float, float]]:
        """Up to ``n`` steps; past ``deadline`` (monotonic s) stop once ``keep`` are done."""
        times = []
        for _ in range(n):
            if len(times) >= keep and time.monotonic() > deadline:
                break
            times.append(self.step())
        return times


def _train(
    entry: E2EEntry, e2e: E2EPlan, device: str, batches: list[tuple[Tensor, Tensor]], seed: int, cap_s: float
) -> dict[str, Any]:
    """Build the model and optimizer, run first, warm-up and timed steps; the measured row fields."""
    assert entry.build is not None
    started = time.monotonic()
    torch.manual_seed(seed)
    model = build_model(e2e, device)
    run = _Run(model, entry.build(model), batches, device, e2e.autocast, _Timer(device))
    first_s = run.step(first=True)[2]
    deadline = started + cap_s
    warm = run.run(e2e.warmup, 0, deadline)
    timed = run.run(e2e.steps, e2e.min_steps, deadline)
    step_ms = [t for _, t, _ in timed]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state = peers.state_bytes(run.opt)
    capped = len(warm) < e2e.warmup or len(timed) < e2e.steps
    status = "ok"
    if capped:
        status = f"capped at {cap_s:.0f} s: warm-up {len(warm)}/{e2e.warmup}, timed {len(timed)}/{e2e.steps}"
    return {
        "status": status,
        "warmup_steps": len(warm),
        "timed_steps": len(timed),
        "step_ms_median": statistics.median(step_ms),
        "step_ms_mean": statistics.fmean(step_ms),
        "step_ms_max": max(step_ms),
        "fwd_bwd_ms_median": statistics.median(t for t, _, _ in timed),
        "first_step_s": first_s,
        "state_bytes": state,
        "param_bytes": param_bytes,
        "state_per_param_byte": state / param_bytes,
        "final_loss": float(run.loss) if run.loss is not None else math.nan,
    }


def _run_entry(
    entry: E2EEntry,
    e2e: E2EPlan,
    plan: Plan,
    batches: list[tuple[Tensor, Tensor]],
    seed: int,
    cap_s: float,
    backend: str,
) -> dict[str, Any]:
    """One row: :func:`_train` (Kron rows under ``TRITONKRON_BACKEND=backend``), with kernel
    fallbacks counted and errors kept."""
    row: dict[str, Any] = {"backend": backend if entry.kron else "-"}
    if entry.kron:
        kernel_guard.reset()  # each row counts its own fallbacks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", kernel_guard.KernelFallbackWarning)
        try:
            with backend_env(backend) if entry.kron else contextlib.nullcontext():
                row |= _train(entry, e2e, plan.device, batches, seed, cap_s)
        except Exception as error:  # one broken optimizer must not cost the others their rows
            row |= {"status": "ERROR", "note": f"{type(error).__name__}: {error}"[:300]}
        finally:
            if row.get("status") == "ERROR":
                gc.collect()  # the failed row's model and state (held by the traceback) go first
            if plan.device == "cuda":
                torch.cuda.empty_cache()
    fallbacks = [w for w in caught if issubclass(w.category, kernel_guard.KernelFallbackWarning)]
    for w in caught:
        if w not in fallbacks:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if entry.kron:
        row["kernel_fallbacks"] = len(fallbacks)
        row["disabled_ops"] = ",".join(sorted(kernel_guard.disabled_ops()))
        if fallbacks:
            row["note"] = (row.get("note", "") + " " + str(fallbacks[0].message))[:300].strip()
    return row


# ---------------------------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------------------------


def _batches(e2e: E2EPlan, device: str, seed: int) -> list[tuple[Tensor, Tensor]]:
    """:data:`BATCH_POOL` random (input, target) token batches [batch, seq_len]."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(BATCH_POOL):
        tokens = torch.randint(e2e.vocab, (e2e.batch, e2e.seq_len + 1), generator=g, device=device)
        out.append((tokens[:, :-1], tokens[:, 1:]))
    return out


def _display(row: dict[str, Any]) -> dict[str, Any]:
    """The printed columns of one row."""
    fallbacks = row.get("kernel_fallbacks")
    return {
        "optimizer": row["optimizer"],
        "status": row["status"],
        "timed": row.get("timed_steps", "-"),
        "step ms median": fmt(row.get("step_ms_median")),
        "mean": fmt(row.get("step_ms_mean")),
        "max": fmt(row.get("step_ms_max")),
        "fwd+bwd ms": fmt(row.get("fwd_bwd_ms_median")),
        "first step s": fmt(row.get("first_step_s")),
        "state / param bytes": fmt(row.get("state_per_param_byte")),
        "loss": fmt(row.get("final_loss")),
        "fallbacks": "-" if fallbacks is None else f"{fallbacks} {row.get('disabled_ops', '')}".strip(),
    }


def _describe(e2e: E2EPlan, plan: Plan, backend: str) -> str:
    """The set-up note of the section."""
    m = e2e.model
    amp = "bf16 autocast" if e2e.autocast else "float32 (no autocast)"
    return (
        f"{m.name}-shaped CharGPT: {m.n_layer} layers × {m.d_model}, {e2e.n_head} heads, vocab {e2e.vocab} "
        f"padded to {e2e.padded_vocab}, head tied to the embedding; batch {e2e.batch} × {e2e.seq_len} random "
        f"tokens ({BATCH_POOL} batches cycled); {amp}, float32 parameters; lr {LR:g} (Muon {MUON_LR:g}); "
        f"step = opt.step() ({'CUDA events' if plan.device == 'cuda' else 'perf_counter'}) over "
        f"{e2e.steps} steps after the first and {e2e.warmup} warm-up; first step = wall s of the first "
        f"opt.step() (compile and autotune included); state bytes / param bytes from "
        f"autotune.measure.state_bytes; Kron rows with TRITONKRON_BACKEND={backend}, fallbacks = "
        f"KernelFallbackWarnings of the row and the ops the kernel guard disabled; cap {e2e.cap_s:.0f} s "
        f"per optimizer, budget {e2e.budget_s:.0f} s"
    )


def run_e2e(
    plan: Plan,
    report: Report,
    seed: int,
    budget_s: float | None = None,
    entries: Sequence[E2EEntry] | None = None,
    kron_backend: str | None = None,
) -> list[dict[str, Any]]:
    """The end-to-end section: one row per optimizer, printed, in the Markdown summary and the CSV.

    Args:
        plan: the gpu_check plan (its ``mode`` and ``device``).
        report: where the table, notes, failures and provenance go.
        seed: initial weights and batches.
        budget_s: the section's wall-clock budget (default: the mode's, :func:`make_e2e_plan`).
        entries: the optimizers (default :func:`perf.gpu_e2e_entries.e2e_entries`).
        kron_backend: ``TRITONKRON_BACKEND`` of the Kron rows (default "triton" on CUDA and under
            the Triton interpreter, else "reference").

    Returns:
        The CSV rows written.
    """
    e2e = make_e2e_plan(plan.mode, budget_s)
    if kron_backend is None:
        kron_backend = "triton" if plan.device == "cuda" or options.triton_interpret() else "reference"
    entries = e2e_entries(e2e.block_size, e2e.rank) if entries is None else entries
    batches = _batches(e2e, plan.device, seed)
    started, rows = time.monotonic(), []
    base = {k: report.env[k] for k in ("gpu_name", "torch", "triton", "git_commit", "timestamp")}
    base |= {"model": e2e.model.name, "batch": e2e.batch, "seq_len": e2e.seq_len, "autocast": e2e.autocast}
    for entry in entries:
        row = {"optimizer": entry.label, "source": entry.source, "lr": entry.lr} | base
        left = e2e.budget_s - (time.monotonic() - started)
        if entry.skip is not None:
            row |= {"status": entry.skip}
        elif left < MIN_ROW_S:
            row |= {"status": f"skipped: section budget of {e2e.budget_s:.0f} s spent"}
        else:
            row |= _run_entry(entry, e2e, plan, batches, seed + 1, min(e2e.cap_s, left), kron_backend)
        rows.append(row)
        print(f"e2e {entry.label}: {row['status']} ({time.monotonic() - started:.1f} s)", flush=True)
        if row["status"] == "ERROR" and entry.kron:
            report.failures.append(f"e2e {entry.label}: {row.get('note', '')}")
        if row.get("kernel_fallbacks"):
            report.failures.append(f"e2e {entry.label}: {row['kernel_fallbacks']} kernel fallbacks")
    append_csv(report.out_dir / CSV_FILES["e2e"], rows, E2E_COLUMNS)
    report.tables["e2e"] = [_display(r) for r in rows]
    report.notes["e2e"] = [_describe(e2e, plan, kron_backend)]
    report.notes["e2e"] += [f"{r['optimizer']}: {r['note']}" for r in rows if r.get("note")]
    report.section("e2e", rows, None, "End-to-end training step")
    return rows
