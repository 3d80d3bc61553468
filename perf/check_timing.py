"""Timing sections of ``python -m perf.gpu_check``: op timing (Triton path vs the torch reference,
throughput from the FLOP / byte model, fraction of the measured peak) and the whole ``tk.Kron``
step (reference vs triton backend, batched vs one parameter per block)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import tritonkron as tk
from perf import shapes
from perf.check_cases import SETUPS, Case, generator, ns_flops, randn, timing_cases
from perf.check_correctness import rel_err
from perf.check_env import backend_env, measure, quantiles, sync
from perf.check_plan import BACKENDS, GRAD_POOL, LOW_DTYPES, STEP_LAYOUTS, Plan
from perf.check_report import Report, fmt, make_row
from perf.shapes import BlockShape
from tritonkron.tuning.entry import dtype_name

# ---------------------------------------------------------------------------------------------
# Op timing
# ---------------------------------------------------------------------------------------------


def _peak_key(case: Case, provider: str) -> str:
    """Which measured peak a row is a fraction of (module docstring, "Fraction of peak")."""
    if case.op == "track_eigenvalues":
        return "bandwidth"
    if case.dtype not in LOW_DTYPES:
        return "fp32"
    low = {torch.float16: "fp16", torch.bfloat16: "bf16"}[case.dtype]
    if provider == "reference" or (case.op == "factor_update" and case.variant.endswith("/I")):
        return low
    return "fp32"


def _time_case(
    case: Case, plan: Plan, report: Report, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """CSV rows (time, throughput, fraction of peak per provider; speed-up) and a display row."""
    prep = SETUPS[case.op](case, generator(plan.device, seed), False)
    memory_bound = case.op == "track_eigenvalues"
    unit, per_unit = ("GB/s", 1e9) if memory_bound else ("TFLOP/s", 1e12)
    rows, times, thr, frac = [], {}, {}, {}
    for provider in ("triton", "reference"):
        note = ""
        if case.op == "inverse_root":  # the FLOPs follow the provider's own iteration count
            iters = prep.run(provider).iterations
            work, note = (
                ns_flops(case.block, int(case.variant.removeprefix("p=")), iters),
                f"iterations={iters}",
            )
        else:
            work = prep.bytes if memory_bound else prep.flops
        q = times[provider] = measure(lambda provider=provider: prep.run(provider), plan)
        thr[provider] = tuple(work / (t * 1e-3) / per_unit for t in (q[0], q[2], q[1]))  # p20 thr ↔ p80 time
        peak_key = _peak_key(case, provider)
        frac[provider] = tuple(x / report.peaks.get(peak_key, math.nan) for x in thr[provider])
        rows += [
            make_row(report.env, case, provider, "time", "ms", q, note=note),
            make_row(report.env, case, provider, "throughput", unit, thr[provider], note=note),
            make_row(
                report.env, case, provider, "frac_peak", "fraction", frac[provider], note=f"peak={peak_key}"
            ),
        ]
    speedup = times["reference"][0] / times["triton"][0]
    rows.append(make_row(report.env, case, "triton", "speedup_vs_reference", "x", (speedup, None, None)))
    tri = times["triton"]
    display = {
        "op": case.op,
        "variant": case.variant,
        "shape": str(case.block),
        "dtype": dtype_name(case.dtype),
    }
    display |= {
        "triton ms p50 [p20, p80]": f"{fmt(tri[0])} [{fmt(tri[1])}, {fmt(tri[2])}]",
        "ref ms p50": fmt(times["reference"][0]),
        "speed-up": fmt(speedup),
        "unit": unit,
        "triton thr": fmt(thr["triton"][0]),
        "triton %peak": fmt(100 * frac["triton"][0]),
        "ref thr": fmt(thr["reference"][0]),
        "ref %peak": fmt(100 * frac["reference"][0]),
    }
    return rows, display


def run_timing(plan: Plan, report: Report, seed: int) -> None:
    """Section 4: Triton path vs torch reference per op and stacked block shape."""
    rows, table, skipped = [], [], []
    for i, case in enumerate(timing_cases(plan)):
        if report.elapsed() > plan.budget_s - plan.step_reserve_s:
            skipped.append(f"{case.op} {case.variant} {case.block} {dtype_name(case.dtype)}")
            continue
        try:
            case_rows, display = _time_case(case, plan, report, seed + i)
        except Exception as error:  # record and go on: the remaining cases are still worth having
            note = f"{type(error).__name__}: {error}"[:300]
            report.failures.append(f"timing {case.op} {case.variant} {case.block}: {note}")
            case_rows = [
                make_row(report.env, case, "triton", "time", "ms", (None,) * 3, status="ERROR", note=note)
            ]
            display = {"op": case.op, "variant": case.variant, "shape": str(case.block)}
            display |= {"dtype": dtype_name(case.dtype), "triton ms p50 [p20, p80]": "ERROR: " + note[:80]}
        rows += case_rows
        table.append(display)
        free_memory(plan)
    report.tables["timing"] = table
    report.notes["timing"] = [
        "speed-up = reference p50 / Triton p50; throughput from the FLOP/byte model in the docstring; "
        "%peak against the measured peak of the precision each provider's GEMMs run in"
    ]
    if skipped:
        report.notes["timing"].append(
            f"{len(skipped)} cases skipped (time budget {plan.budget_s:.0f} s): "
            + "; ".join(skipped[:10])
            + (" …" if len(skipped) > 10 else "")
        )
    report.section("timing", rows, "timing", "Op timing")


def free_memory(plan: Plan) -> None:
    """Return cached device memory between cases (CUDA only)."""
    if plan.device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Optimizer step
# ---------------------------------------------------------------------------------------------


def _step_params(plan: Plan, layout: str, seed: int) -> tuple[list[torch.nn.Parameter], list[list[Tensor]]]:
    """Parameters (whole layers, or one per block) and a pool of gradients for each."""
    layers = plan.step_model.transformer_block()
    if layout == "batched":  # per_block and per_block_unstacked: one parameter per block
        mats = [layer.shape for layer in layers]
    else:
        mats = [s for layer in layers for s in shapes.per_block_matrices(layer, plan.step_block_size)]
    g = generator(plan.device, seed)
    params = [torch.nn.Parameter(randn(g, *s, scale=0.02)) for s in mats]
    grads = [[randn(g, *s, scale=1e-2) for _ in range(GRAD_POOL)] for s in mats]
    return params, grads


def _time_steps(
    plan: Plan, layout: str, backend: str, seed: int
) -> tuple[tuple[float, float, float], Tensor]:
    """(p50, p20, p80) ms of ``tk.Kron.step`` after warm-up, and the final parameters (flattened)."""
    params, grads = _step_params(plan, layout, seed)
    opt = tk.Kron(params, lr=1e-3, block_size=plan.step_block_size, stack=layout != "per_block_unstacked")
    times = []
    with backend_env(backend):
        for i in range(plan.step_warmup + plan.step_steps):
            for p, pool in zip(params, grads, strict=True):
                p.grad = pool[i % GRAD_POOL]
            sync(plan.device)
            start = time.perf_counter()
            opt.step()
            sync(plan.device)
            if i >= plan.step_warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return quantiles(times), torch.cat([p.detach().flatten() for p in params])


def run_step(plan: Plan, report: Report, seed: int) -> None:
    """Section 5: the whole ``tk.Kron`` step, reference vs triton backend, batched vs per-block."""
    layers = plan.step_model.transformer_block()
    nblocks = sum(len(shapes.per_block_matrices(layer, plan.step_block_size)) for layer in layers)
    block = BlockShape(f"{plan.step_model.name}/transformer_block", nblocks, 0, 0)
    desc = ", ".join(f"{layer.name} {layer.rows}x{layer.cols}" for layer in layers)
    note = (
        f"layers: {desc}; block_size={plan.step_block_size}; {plan.step_steps} steps after "
        f"{plan.step_warmup} warm-up; precondition_every=10"
    )
    rows, results, finals = [], {}, {}

    def row(layout: str, backend: str, metric: str, unit: str, q: Sequence[float | None], **kw: str) -> None:
        r = make_row(
            report.env, Case("kron_step", layout, block, torch.float32), backend, metric, unit, q, **kw
        )
        rows.append(r | {"m": None, "n": None})  # a layer set, not one [B, m, n] stack: B = number of blocks

    for layout in STEP_LAYOUTS:
        for backend in BACKENDS:
            try:
                results[layout, backend], finals[layout, backend] = _time_steps(plan, layout, backend, seed)
                row(layout, backend, "step_time", "ms", results[layout, backend], note=note)
            except Exception as error:
                msg = f"{type(error).__name__}: {error}"[:300]
                report.failures.append(f"step {layout} {backend}: {msg}")
                row(layout, backend, "step_time", "ms", (None, None, None), status="ERROR", note=msg)
            free_memory(plan)
    table = []
    for layout, backend in results:
        q = results[layout, backend]
        ref, batched = results.get((layout, "reference")), results.get(("batched", backend))
        gain = fmt(q[0] / batched[0]) if batched and layout != "batched" else "-"
        table.append(
            {"layout": layout, "backend": backend, "blocks": nblocks}
            | {"p50 ms": fmt(q[0]), "p20 ms": fmt(q[1]), "p80 ms": fmt(q[2])}
            | {
                "speed-up vs reference": fmt(ref[0] / q[0]) if ref else "-",
                "time / batched": gain,
            }
        )
    report.notes["step"] = [note]
    for layout in STEP_LAYOUTS:
        if (layout, "reference") in finals and (layout, "triton") in finals:
            diff = rel_err(finals[layout, "triton"], finals[layout, "reference"])
            drift = "informative: trajectories may drift"
            row(layout, "triton", "param_rel_diff_vs_reference", "ratio", (diff, None, None), note=drift)
            report.notes["step"].append(
                f"{layout}: ‖W_triton − W_reference‖/‖W_reference‖ after "
                f"{plan.step_warmup + plan.step_steps} steps = {diff:.2e}"
            )
    report.tables["step"] = table
    report.section("step", rows, "step", "Optimizer step")
