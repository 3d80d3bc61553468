"""A 2-rank data-parallel run of ``tk.Kron`` as a standalone program, to check that it exits cleanly.

``python tests/distributed/ddp_exit_script.py`` starts two gloo ranks on loopback (one subprocess
each); every rank trains a tiny MLP under ``DistributedDataParallel`` with
``tk.Kron(..., rank=4, precondition_every=2)`` for 6 steps, then calls ``barrier()`` and
``destroy_process_group()`` and returns from its main function, so the interpreter's own exit
(the process group's worker threads joined, tensors freed) is part of what is checked.

The launcher exits 0 when both ranks exit 0 within ``--timeout`` seconds; a rank still running then
is killed and the launcher exits 124 (a hang), otherwise it exits with the first non-zero code.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

WORLD = 2
STEPS = 6
ROOT = Path(__file__).resolve().parents[2]


def _rank_main(rank: int, port: int) -> None:
    """One rank: DDP on a tiny MLP, six ``tk.Kron`` steps, barrier, group destroyed."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import tritonkron as tk

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    )
    opt = tk.Kron(model.parameters(), lr=0.01, rank=4, precondition_every=2)
    gen = torch.Generator().manual_seed(1 + rank)
    for _ in range(STEPS):
        x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 8, generator=gen)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(timeout: float) -> int:
    """Start both ranks and wait; 0 when both exit 0 in time, 124 on a hang, else the first failure."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    ranks = [
        subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--port", str(port)], env=env)
        for r in range(WORLD)
    ]
    deadline = time.monotonic() + timeout
    codes: list[int | None] = [None] * WORLD
    try:
        for r, proc in enumerate(ranks):
            try:
                codes[r] = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"rank {r} still running after {timeout:.0f} s: killed", file=sys.stderr)
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - deadline + timeout
    for r, code in enumerate(codes):
        if code not in (0, None):
            print(f"rank {r} exited with code {code}", file=sys.stderr)
    if None in codes:
        return 124
    failed = next((code for code in codes if code != 0), 0)
    if failed == 0:
        print(f"both ranks exited cleanly in {seconds:.1f} s")
    return failed if failed >= 0 else 128 - failed  # killed by signal s: 128 + s, as a shell reports it


def main() -> int:
    """Launcher (no ``--rank``) or one rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, help="run as this rank (used by the launcher)")
    parser.add_argument("--port", type=int, help="rendezvous port (used by the launcher)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a rank counts as hung")
    args = parser.parse_args()
    if args.rank is None:
        return launch(args.timeout)
    _rank_main(args.rank, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
