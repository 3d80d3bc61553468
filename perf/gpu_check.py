"""One-command GPU check of tritonkron: environment, device peak, correctness, op timing, optimizer step.

Usage::

    python -m perf.gpu_check [--quick] [--out-dir perf/results] [--ops OP ...] [--budget-s S]
                             [--e2e-budget-s S]
    python -m perf.gpu_check --quick --cpu-interpret    # CPU smoke run through the Triton interpreter

``--out-dir`` defaults to ``perf/results`` (``$TMPDIR/tritonkron_gpu_check`` with ``--cpu-interpret``).

Without CUDA and without ``--cpu-interpret`` it prints why and exits 2. ``--cpu-interpret`` sets
``TRITON_INTERPRET=1`` at the top of this module, before anything imports triton, and runs a tiny
version of the same pipeline on CPU tensors (shapes ≤ 32, 1–2 repetitions timed with
``time.perf_counter``), so that the script itself is tested without a GPU.

Sections (run in this order; each writes its rows as soon as it finishes):

1. Environment: Python, torch, triton, CUDA, GPU, ``nvidia-smi``, the git commit (read from
   ``.git`` without running git; ``TRITONKRON_GIT_COMMIT`` overrides it where ``.git`` is absent).
2. Device peak: a large fp32, bf16 and fp16 ``torch.matmul`` (TFLOP/s) and a device-to-device copy
   (GB/s). fp32 runs at the process's default matmul precision (PyTorch's default is IEEE fp32,
   no TF32), the same precision as the fp32 kernels (``input_precision="ieee"``).
3. Correctness: the Triton path (``ops.<op>(..., backend="triton")``) against the float64
   reference (``backend="reference"`` on float64 copies of the same rounded inputs), on fresh
   random inputs over a few block shapes. Metric: relative Frobenius error ‖out − ref‖_F/‖ref‖_F
   (the max over outputs; NaN counts as ∞), PASS when ≤ the tolerance of the input dtype: fp32
   1e-5, fp16 2e-3, bf16 1e-2. Newton–Schulz (p = 2, 4; SPD A = GGᵀ/d + 0.1·I, κ ≈ 40) is judged
   by its residual ‖XᵖA − I‖_F/√d in float64 (fp32 root) ≤ 5e-5 and convergence: the fp32
   reference iteration itself reaches 4e-6–8.5e-6 there (d = 257–768), the root's fp32 rounding.
4. Op timing: Triton path vs the torch reference (the same op on the same inputs; on CUDA the
   reference's matmuls are cuBLAS) with ``triton.testing.do_bench(fn, warmup=10, rep=50,
   quantiles=[0.5, 0.2, 0.8])``, for every stacked block shape of GPT-2-small and Llama-7B at
   block size 1024 (``perf.shapes``). Reported: p50 ms, TFLOP/s (GB/s for the memory-bound
   eigenvalue tracking) from the model below, the fraction of the measured peak, and the speed-up
   reference p50 / Triton p50. Throughput quantiles are FLOPs / time quantiles (p20 of the
   throughput comes from p80 of the time).
5. Optimizer step: ``tk.Kron`` (fp32) on one GPT-2-small transformer block (attn_qkv, attn_proj,
   mlp_fc, mlp_proj), reference backend vs triton backend (``TRITONKRON_BACKEND``), median step
   time over N steps after warm-up (``torch.cuda.synchronize`` around each step; the basis
   refresh every 10 steps is included, so p80 shows it), and per-block baselines: the same
   Kron with every block a separate parameter, stacked across parameters (``stack=True``, the
   default) and stepped one parameter at a time (``stack=False``: B = 1 launches), which show the
   batching and stacking gains.
   The final parameters of the two backends are compared (informative: trajectories may drift).
6. End-to-end (``--ops e2e``, :mod:`perf.gpu_e2e`): whole training steps of a GPT-2-small-shaped
   model (bf16 autocast, batch 8 × 1024 random tokens) with fused AdamW, torch Muon + AdamW,
   heavyball SOAP (skipped with its reason where heavyball is missing) and ``tk.Kron`` (default,
   ``block_size=256``, ``rank=64``, ``rank=64, sketch=True``) on the Triton path: step time
   median / mean / max (CUDA events), the first step in s, state bytes per parameter byte and
   the kernel fallbacks per row. Its own budget (``--e2e-budget-s``, quick 150 s) and a cap per
   optimizer bound it.
7. Files under ``--out-dir``: rows appended to ``gpu_check_correctness.csv``,
   ``gpu_check_timing.csv`` and ``gpu_check_step.csv`` (columns :data:`CSV_COLUMNS`) and
   ``gpu_check_e2e.csv`` (columns :data:`perf.gpu_e2e.E2E_COLUMNS`), and the Markdown summary
   ``gpu_check_<date>_<gpu>.md`` (rewritten after each section).

Modes (shapes from ``perf.shapes``):

- full: correctness on 4 block shapes × fp32/fp16/bf16 (112 rows); timing on the 11 GPT-2-small
  and Llama-7B stacks × fp32 (every variant) and bf16 (W = I factor updates and the other ops),
  plus NS on 2 factor stacks (158 cases, 2 providers each); step over 20 steps after 3 warm-up.
- ``--quick``: correctness on 2 shapes × fp32/bf16, timing on one attention stack per model, NS on
  one stack, step over 10 steps: about a minute; end-to-end 10 warm-up + 30 timed steps per
  optimizer, at most 25 s each, 150 s in all (the whole ``--quick`` run: under 6 minutes).
- ``--budget-s`` (default 400 s, quick 120 s) bounds the run: correctness cases past half of it
  are not run (SKIP rows), timing cases past it minus a reserve for the step are skipped (listed
  in the summary), so that a slow compile cannot eat the whole device allocation.

Modules: this one is the command line; :mod:`perf.check_plan` (constants and run plans),
:mod:`perf.check_env` (environment, peaks, timer), :mod:`perf.check_cases` (inputs and FLOP
models per op), :mod:`perf.check_correctness`, :mod:`perf.check_timing` (op timing and the
optimizer step), :mod:`perf.gpu_e2e` (the end-to-end section) and :mod:`perf.check_report` (CSV rows
and the Markdown summary).

Exit status: 0 when every row passed; 1 when a correctness row failed, a case raised, or an
end-to-end Kron row raised or fell back to the reference (all files are still written); 2 when
there is no CUDA device and no ``--cpu-interpret``.

FLOP model, per call, of what a dense implementation executes. The symmetric kernels (factor
update, NS) compute only the upper tiles, about half, and are still credited with the full
product's FLOPs, so TFLOP/s compare like for like with the reference::

    factor_update, W = I            2·B·d²·k               d = m, k = n (left); d = n, k = m (right)
    factor_update, W = Q diag(w) Qᵀ  2·B·d·k² + 2·B·d²·k    P = 𝒢Q, then P diag(w) Pᵀ
    factor_update, dense W          2·B·d·k² + 2·B·d²·k    P = 𝒢W, then P 𝒢ᵀ
    precondition                    4·B·(m²n + mn²)        Q_AᵀM 2Bm²n, ·Q_B 2Bmn², Q_A· 2Bm²n, ·Q_Bᵀ 2Bmn²
    rotate (forward / back)         2·B·(m²n + mn²)        Q_AᵀX (Q_A X̂) 2Bm²n, ·Q_B (·Q_Bᵀ) 2Bmn²
    rotated_statistics, logdet      4·B·mn(m + n)          P = G Q_B, R = Q_Aᵀ G, P diag(w_B) Pᵀ, Rᵀ diag(w_A) R
                                    + 2·B·mn·min(m, n)     Ĝ = R Q_B or Q_Aᵀ P (float32 only)
    rotated_statistics, W = I       4·B·mn(m + n)          R (or P), Ĝ, G Gᵀ, Gᵀ G
    spike_and_flat (rank k = m/8)   4·B·m·k·n              U_kᵀY and U_k C
    inverse_root (NS, p)            2·B·d³·(3 + g_p·iters) g_2 = 3, g_4 = 4 GEMMs per iteration;
                                                           3 squarings for the λ_max bound
    track_eigenvalues (bytes)       e·B·(mn + 3(m + n) + 2) Ĝ once, a, b, weights, outputs, scales

Fraction of peak: against the peak of the precision the provider's GEMMs run in. The reference
runs in its input dtype. The Triton factor update with W = I and fp16/bf16 G uses the tensor-core
``tl.dot``; every other Triton path keeps fp32 operands or intermediates (three of the four
precondition GEMMs, the second spike-and-flat GEMM) and is compared with the fp32 peak.
Eigenvalue tracking is compared with the copy bandwidth (the kernel reads Ĝ twice, so 50% of it
is that kernel's ceiling when Ĝ does not stay in L2).
"""

from __future__ import annotations

import os
import sys

if "--cpu-interpret" in sys.argv:  # before anything imports triton: the interpreter is chosen at import
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from perf.check_correctness import run_correctness  # noqa: E402
from perf.check_env import REPO_ROOT, collect_env, measure_peaks, nvidia_smi  # noqa: E402
from perf.check_plan import OPS, SECTION_OPS, make_plan  # noqa: E402
from perf.check_report import CSV_FILES, Report, fmt, markdown_table  # noqa: E402
from perf.check_timing import run_step, run_timing  # noqa: E402
from perf.gpu_e2e import run_e2e  # noqa: E402

_RESULTS = REPO_ROOT / "perf" / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m perf.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset of a few minutes")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where files go (default perf/results; with --cpu-interpret a folder under the temp dir)",
    )
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to check (default: all)"
    )
    parser.add_argument(
        "--cpu-interpret",
        action="store_true",
        help="tiny smoke run on CPU tensors through the Triton interpreter",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget in s; cases past it are skipped and reported (default 400, quick 120)",
    )
    parser.add_argument(
        "--e2e-budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the end-to-end section in s (default 600, quick 150)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the exit status (module docstring)."""
    args = parse_args(argv)
    if args.cpu_interpret and os.environ.get("TRITON_INTERPRET") != "1":
        print(
            "--cpu-interpret needs TRITON_INTERPRET=1 before triton is imported: run "
            "`python -m perf.gpu_check --quick --cpu-interpret`",
            file=sys.stderr,
        )
        return 2
    if not args.cpu_interpret and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is available. Run it on a GPU machine, or run the CPU smoke "
            "version: python -m perf.gpu_check --quick --cpu-interpret",
            file=sys.stderr,
        )
        return 2
    plan = make_plan(args.quick, args.cpu_interpret, args.ops, args.budget_s)
    if args.out_dir is None:  # CPU smoke figures do not belong next to committed GPU results
        args.out_dir = (
            Path(tempfile.gettempdir()) / "tritonkron_gpu_check" if args.cpu_interpret else _RESULTS
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = collect_env(plan)
    report = Report(args.out_dir, env, nvidia_smi(), plan)
    print("# tritonkron gpu_check\n\n" + markdown_table([{"key": k, "value": v} for k, v in env.items()]))
    print("\n" + report.smi)

    torch.manual_seed(args.seed)
    report.peaks = measure_peaks(plan)
    print(
        "\n## Device peak\n\n"
        + markdown_table([{"peak": k, "value": fmt(v, 4)} for k, v in report.peaks.items()])
    )
    if any(op in plan.ops for op in OPS if op not in SECTION_OPS):
        run_correctness(plan, report, args.seed)
        run_timing(plan, report, args.seed + 10_000)
    if "kron_step" in plan.ops:
        run_step(plan, report, args.seed + 20_000)
    if "e2e" in plan.ops:
        run_e2e(plan, report, args.seed + 30_000, args.e2e_budget_s)
    path = report.write_markdown()
    written = [name for name in CSV_FILES.values() if (args.out_dir / name).exists()]
    print(f"\nwrote {path.name} and {', '.join(written)} in {args.out_dir} ({report.elapsed():.1f} s)")
    if report.failures:
        print(f"{len(report.failures)} failures:\n  " + "\n  ".join(report.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
