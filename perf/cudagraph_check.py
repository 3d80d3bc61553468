"""Whether ``torch.compile(opt.step, mode="reduce-overhead")`` captures a steady ``tk.Kron`` step
in CUDA graphs, and its step time against the eager step.

Usage (from the repository root)::

    python -m perf.cudagraph_check [--steps 20] [--device cuda|cpu]

One 96 × 64 weight in blocks of 32 × 32 (six blocks, T = 4: two refresh slots, so the refresh is
the static-shape one of :func:`tritonkron.step.traceable.refresh_slots`) with a fixed gradient.
The first step runs eagerly (it creates the state and initialises every block), and so do the
timed eager steps; then :meth:`tritonkron.Kron.prepare_capture` gives the state its device clock,
the ready flags and static addresses, so only the steady step is compiled (one graph, without
branches, which keeps the compile short).
The reasons inductor gives for not capturing (logged by
``torch._inductor.cudagraph_utils``' ``cudagraphs`` log, counted in ``counters["inductor"]["cudagraph_skips"]``) are
printed; :mod:`tritonkron.step.traceable` says which parts of the step are expected among them.
Then ``--steps`` eager and ``--steps`` compiled steps are timed (median, with
``torch.cuda.synchronize()``). Without CUDA the check reports that it is skipped; ``--device cpu``
runs the same code on the CPU (no graphs to capture: a check of this script).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
from torch._dynamo.utils import counters
from torch._inductor.cudagraph_utils import cudagraphs_log

import tritonkron as tk


class _Reasons(logging.Handler):
    """Keeps the first line of every log record that mentions CUDA graphs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cudagraph" in message.lower():
            self.lines.append(message.splitlines()[0][:200])


def _setup(device: str) -> tuple[torch.nn.Parameter, torch.Tensor, tk.Kron]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(96, 64, device=device) / 8)
    grad = torch.randn(96, 64, device=device)
    opt = tk.Kron([weight], lr=1e-3, precondition_every=4, block_size=32)
    weight.grad = grad
    opt.step()  # eager: creates the state and initialises the blocks
    return weight, grad, opt


def _times(step, weight: torch.nn.Parameter, grad: torch.Tensor, count: int, device: str) -> list[float]:
    times = []
    for _ in range(count):
        weight.grad = grad
        if device == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints whether the steady step was captured and the step times."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cudagraph check: skipped, torch sees no CUDA device")
        return 0
    torch._logging.set_logs(cudagraphs=True)  # (re)configures torch's loggers: add the handler after
    reasons = _Reasons()
    cudagraphs_log.addHandler(reasons)
    weight, grad, opt = _setup(args.device)
    eager = _times(opt.step, weight, grad, args.steps, args.device)
    print(f"every block initialised (prepare_capture): {opt.prepare_capture()}")
    compiled_step = torch.compile(opt.step, mode="reduce-overhead", fullgraph=True)
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        start = time.perf_counter()
        _times(compiled_step, weight, grad, 3, args.device)  # compile, warm-up, record
        print(f"compile and 3 warm-up steps: {time.perf_counter() - start:.1f} s", flush=True)
        compiled = _times(compiled_step, weight, grad, args.steps, args.device)
    skips = counters["inductor"]["cudagraph_skips"]
    if args.device == "cuda":
        print(f"captured in CUDA graphs: {'yes' if skips == 0 else 'no'} ({skips} skips logged)")
    else:
        print("captured in CUDA graphs: not applicable on the CPU")
    for line in dict.fromkeys(reasons.lines):
        print(f"  {line}")
    eager_ms, compiled_ms = statistics.median(eager), statistics.median(compiled)
    print(f"step median: eager {eager_ms:.3f} ms, reduce-overhead {compiled_ms:.3f} ms ({args.device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
