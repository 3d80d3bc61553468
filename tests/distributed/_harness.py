"""Shared pieces of the multi-process tests: a free port, a gloo launcher, a tiny model, a training loop."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tritonkron as tk

STEPS = 5  # with precondition_every=2: two basis refreshes
CONFIGS = [{"divergence": d, "rank": r} for d in ("logdet", "von_neumann", "frobenius") for r in (None, 2)]


def make_model(bias: bool = True) -> torch.nn.Module:
    """Three small Linear layers (matrices 16×12, 10×16, 6×10; biases optional); the same weights each call."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 16, bias=bias),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 10, bias=bias),
        torch.nn.Linear(10, 6, bias=bias),
    )


def make_opt(params: Any, options: dict) -> tk.Kron:
    """The optimizer every test uses (refresh every 2 steps, weight decay on)."""
    return tk.Kron(params, lr=0.05, precondition_every=2, weight_decay=0.01, **options)


def gradients(shapes: list[torch.Size], steps: int) -> list[list[torch.Tensor]]:
    """Synthetic gradients, ``[step][param]``, the same on every process (as after DDP's all-reduce)."""
    gen = torch.Generator().manual_seed(7)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


def reference(options: dict, steps: int = STEPS, bias: bool = True) -> list[torch.Tensor]:
    """Parameters after ``steps`` single-process steps on :func:`gradients`."""
    model = make_model(bias)
    opt = make_opt(model.parameters(), options)
    for grads in gradients([p.shape for p in model.parameters()], steps):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, body: Callable, out: str, args: tuple) -> None:
    """One rank: run ``body``, save its result, then end the process without a teardown.

    The body's own collectives from PyTorch (``full_tensor``, DCP, object collectives) hand tensors
    to gloo's worker threads, which may still be releasing them, needing the GIL to do so, after
    the call returned. Destroying the group then (its destructor joins those threads holding the
    GIL) can deadlock, and interpreter finalization can end such a thread mid-release, aborting the
    process ("terminate called without an active exception"). So once every rank is past a
    barrier (all collectives done everywhere, the result on disk) the rank ends with ``os._exit``:
    no destructor and no finalization left to race with. A failing body still raises, reported by
    ``torch.multiprocessing``, and destroys the group as before. A clean exit through
    ``destroy_process_group`` is checked on its own by tests/distributed/test_exit.py.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(body(rank, world, *args), Path(out) / f"rank{rank}.pt")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(body: Callable, world: int, out: Path, *args: Any) -> list[Any]:
    """Run ``body(rank, world, *args)`` on ``world`` gloo processes; return each rank's result."""
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(world, free_port(), body, str(out), args), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
