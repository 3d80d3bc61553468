"""Correctness section of ``python -m perf.gpu_check``: the Triton path of every op against its
float64 reference, by relative Frobenius error (Newton–Schulz: by residual ‖XᵖA − I‖_F/√d and
convergence), PASS/FAIL per row against the tolerances of :mod:`perf.check_plan`."""

from __future__ import annotations

import math
from typing import Any

import torch

from perf.check_cases import SETUPS, Case, Prepared, correctness_cases, generator
from perf.check_plan import CORRECTNESS_BUDGET_SHARE, NS_RESIDUAL_TOL, TOLERANCE, Plan
from perf.check_report import Report, fmt, make_row
from tritonkron.ops.inverse_root.methods import RootStatus, inverse_root_eigh
from tritonkron.tuning.entry import dtype_name


def rel_err(actual: Any, expected: Any) -> float:
    """Relative Frobenius error in float64 (max over tuple outputs); NaN/Inf in ``actual`` → inf."""
    if isinstance(actual, (tuple, list)):
        return max(rel_err(a, e) for a, e in zip(actual, expected, strict=True))
    a, e = actual.double(), expected.double()
    if not bool(torch.isfinite(a).all()):
        return math.inf
    return float((a - e).norm() / e.norm().clamp_min(torch.finfo(torch.float64).tiny))


def _check_inverse_root(prep: Prepared, case: Case) -> tuple[float, bool, str]:
    """(residual ‖XᵖA − I‖_F/√d in float64, converged, note) of the Triton root."""
    p = int(case.variant.removeprefix("p="))
    (A,) = prep.tensors
    result = prep.run("triton")
    X, A64 = result.root.double(), A.double()
    d = A.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    resid = float(((torch.linalg.matrix_power(X, p) @ A64 - eye).norm(dim=(-2, -1)) / math.sqrt(d)).max())
    err = rel_err(result.root, inverse_root_eigh(A64, p))
    converged = result.status is RootStatus.CONVERGED
    note = (
        f"status={result.status.value}, iterations={result.iterations}, "
        f"kernel ‖M−I‖/√d={float(result.residual.max()):.2e}, rel err vs float64 eigh root={err:.2e}"
    )
    return resid, converged, note


def _check_case(case: Case, g: torch.Generator) -> tuple[float, str, str]:
    """(value, PASS/FAIL, note) of one correctness case; an exception is a FAIL with its message."""
    try:
        prep = SETUPS[case.op](case, g, True)
        if case.op == "inverse_root":
            value, converged, note = _check_inverse_root(prep, case)
            return value, "PASS" if converged and value <= NS_RESIDUAL_TOL else "FAIL", note
        value = rel_err(prep.run("triton"), prep.oracle())
        return value, "PASS" if value <= TOLERANCE[case.dtype] else "FAIL", ""
    except Exception as error:  # a crashing case is a failed row, and the run goes on
        return math.nan, "FAIL", f"{type(error).__name__}: {error}"[:300]


def run_correctness(plan: Plan, report: Report, seed: int) -> None:
    """Section 3: every op's Triton path vs its float64 reference; PASS/FAIL per row."""
    rows, table, skipped = [], [], 0
    for i, case in enumerate(correctness_cases(plan)):
        metric = "residual" if case.op == "inverse_root" else "rel_err"
        tol = NS_RESIDUAL_TOL if case.op == "inverse_root" else TOLERANCE[case.dtype]
        if report.elapsed() > plan.budget_s * CORRECTNESS_BUDGET_SHARE:
            value, status, note = math.nan, "SKIP", "time budget"
            skipped += 1
        else:
            value, status, note = _check_case(case, generator(plan.device, seed + i))
        if status == "FAIL":
            report.failures.append(
                f"correctness {case.op} {case.variant} {case.block} {dtype_name(case.dtype)}"
            )
        q = (None if math.isnan(value) else value, None, None)
        rows.append(
            make_row(report.env, case, "triton", metric, "ratio", q, tolerance=tol, status=status, note=note)
        )
        table.append(
            {
                "op": case.op,
                "variant": case.variant,
                "shape": str(case.block),
                "dtype": dtype_name(case.dtype),
            }
            | {"metric": metric, "value": fmt(value), "tol": fmt(tol), "status": status, "note": note}
        )
    report.tables["correctness"] = table
    passed = sum(r["status"] == "PASS" for r in rows)
    report.notes["correctness"] = [f"{passed}/{len(rows)} rows PASS"]
    if skipped:
        report.notes["correctness"].append(
            f"{skipped} rows not run (SKIP): past {CORRECTNESS_BUDGET_SHARE:.0%} of the {plan.budget_s:.0f} s budget"
        )
    report.section("correctness", rows, "correctness", "Correctness (Triton vs float64 reference)")
