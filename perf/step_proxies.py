"""CPU proxies of the GPU step's cost: what one optimizer step dispatches, reads back and factorises.

A GPU step is slow when it synchronises with the host, launches many small ops, or factorises
many matrices on one step. None of this needs a GPU to count: a ``TorchDispatchMode`` sees every
ATen op a step dispatches, on CPU tensors exactly as on CUDA ones.

- **host reads**: ops whose result the host must wait for on a GPU: ``aten._local_scalar_dense``
  (``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``, ``.tolist()``), the ops whose output
  shape depends on the data (``nonzero``, ``masked_select``, ``unique``…, and indexing with a
  boolean mask, ``x[mask]``), and the factorisations that check their LAPACK error codes on the
  host (``eigh``, ``svd``, ``_linalg_check_errors`` of ``cholesky``/``inv``…; ``cholesky_ex``,
  QR and triangular solves do not);
- **ops**: ATen ops dispatched; **kernels**: those that launch work on a GPU, that is not views
  (``slice``, ``view``, ``expand``…, a new tensor header) nor allocations (``empty_like``…);
- **factorised**: matrices passed to QR and to eigh/SVD in the step, counting every batch entry.

``python -m perf.step_proxies`` prints them per steady step (mean and max over ``precondition_every``
steps after a warm-up, so every refresh step is included) for GPT-shaped models of growing depth; a step that scales
well has a flat op count, no host reads and at most ceil(blocks / T) factorisations per step.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tritonkron as tk
from perf.models import CharGPT

HOST_READ_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "argwhere",
        "_linalg_eigh",
        "_linalg_svd",
        "_linalg_check_errors",
    }
)
QR_OPS = frozenset({"linalg_qr", "geqrf"})
EIGH_OPS = frozenset({"linalg_eigh", "_linalg_eigh", "linalg_svd", "_linalg_svd"})
MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
NO_KERNEL_OPS = frozenset(
    {
        "alias",
        "as_strided",
        "detach",
        "diagonal",
        "expand",
        "narrow",
        "permute",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "squeeze",
        "t",
        "transpose",
        "unbind",
        "unsqueeze",
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
    }
)

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "rank=8": {"rank": 8},
    "rank=8+sketch": {"rank": 8, "sketch": True},
    "bias_correction": {"bias_correction": True},
}


def _has_bool_index(args: tuple) -> bool:
    """Whether an indexing op's index list holds a boolean mask (a data-dependent shape)."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops by name, and the matrices factorised by QR and eigh/SVD."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.masked_indexing = 0
        self.qr_matrices = 0
        self.eigh_matrices = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        """Record ``func`` (and the batch size of a factorisation), then run it."""
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in MASK_INDEX_OPS and _has_bool_index(args):
            self.masked_indexing += 1
        if name in QR_OPS or name in EIGH_OPS:
            batch = math.prod(args[0].shape[:-2])
            if name in QR_OPS:
                self.qr_matrices += batch
            else:
                self.eigh_matrices += batch
        return func(*args, **(kwargs or {}))

    @property
    def host_reads(self) -> int:
        """Ops that make a GPU step wait for the device (module docstring)."""
        return self.masked_indexing + sum(n for name, n in self.ops.items() if name in HOST_READ_OPS)

    @property
    def total(self) -> int:
        """Every ATen op dispatched."""
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        """The dispatched ops that launch device work (module docstring)."""
        return sum(n for name, n in self.ops.items() if name not in NO_KERNEL_OPS)


@contextmanager
def counting() -> Iterator[OpCounter]:
    """``with counting() as c:`` counts what the block dispatches."""
    counter = OpCounter()
    with counter:
        yield counter


def gpt(n_layer: int, d_model: int = 64, vocab: int = 96, context: int = 32) -> nn.Module:
    """A GPT-2-shaped model scaled down (nanoGPT layout) of ``n_layer`` blocks."""
    torch.manual_seed(0)
    return CharGPT(vocab, context=context, d_model=d_model, n_layer=n_layer, n_head=4)


def _backward(model: nn.Module, generator: torch.Generator) -> None:
    """Fill the gradients with one next-token loss on random tokens."""
    idx = torch.randint(0, model.head.out_features, (4, model.context + 1), generator=generator)
    logits = model(idx[:, :-1])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    model.zero_grad(set_to_none=True)
    loss.backward()


def measure(
    make_model: Callable[[], nn.Module], options: dict[str, Any], warmup: int = 3
) -> dict[str, float]:
    """Per-step counts over one refresh period T after ``warmup`` steps and one more period (the
    first period copies each refresh schedule's block indices to the device once; mean and max per step)."""
    model = make_model()
    opt = tk.Kron(model.parameters(), lr=1e-3, **options)
    period = opt.param_groups[0]["precondition_every"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(warmup + period):
        _backward(model, generator)
        opt.step()
    rows = []
    for _ in range(period):
        _backward(model, generator)
        with counting() as counter:
            opt.step()
        rows.append(
            (counter.total, counter.kernels, counter.host_reads, counter.qr_matrices + counter.eigh_matrices)
        )
    ops, kernels, reads, factorised = zip(*rows, strict=True)
    return {
        "ops mean": sum(ops) / period,
        "ops max": max(ops),
        "kernels mean": sum(kernels) / period,
        "host reads mean": sum(reads) / period,
        "host reads max": max(reads),
        "factorised mean": sum(factorised) / period,
        "factorised max": max(factorised),
    }


def table(depths: list[int], configs: list[str]) -> pd.DataFrame:
    """One row per (configuration, depth)."""
    rows = []
    for name in configs:
        for depth in depths:
            model = gpt(depth)
            params = sum(p.numel() for p in model.parameters())
            counts = measure(lambda d=depth: gpt(d), CONFIGS[name])
            rows.append({"config": name, "layers": depth, "params": params, **counts})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """Print the proxies for each configuration and depth."""
    parser = argparse.ArgumentParser(prog="python -m perf.step_proxies", description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1,2,4", help="comma-separated numbers of blocks (default 1,2,4)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}"
    )
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {unknown}; allowed: {list(CONFIGS)}")
    torch.set_num_threads(1)
    frame = table([int(d) for d in args.depths.split(",")], configs)
    print(frame.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
