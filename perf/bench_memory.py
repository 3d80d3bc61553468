"""Optimizer-state memory per parameter byte: AdamW, full ``Kron``, ``rank=k`` dense and ``rank=k, sketch=True``.

Usage (from the repository root)::

    python -m perf.bench_memory [--lm-steps 200] [--vocab 4096] [--gpt2-rank 128] [--device auto|cpu|cuda]
                                [--out perf/results/memory.csv]

Two workloads:

1. **GPT-2-small layer shapes** (``perf.shapes.GPT2_SMALL``: qkv, attention projection, MLP in/out,
   the 50257 × 768 token embedding). One fp32 parameter of each shape is created with
   ``torch.empty`` and stepped once with a synthetic gradient, which allocates every optimizer's
   full state; the state tensors are then measured and multiplied by the layer count. The default
   gradient is all-zero (``--gpt2-grad zero``: same tensor sizes, without the dense path's
   d × d eigendecompositions; checked against an N(0, 1) gradient on one layer in every run).
   Dense ``Kron`` runs at its default ``block_size=1024``; the unblocked dense factor of the
   embedding (50257² floats, plus its eigenbasis) is reported as not allocatable with its size.
   The sketched optimizer runs unblocked (``--sketch-block-size``), since its state is O((m + n)·ℓ).
2. **A small language model with a vocabulary-sized embedding**, trained for ``--lm-steps`` steps on
   text read from this machine: the Python standard library's own ``.py`` sources (no network; the
   corpus is named in the output). Tokens are words and punctuation (regex ``\\w+|[^\\w\\s]``) with the
   ``--vocab`` − 1 most frequent kept and the rest mapped to ``<unk>``: a character vocabulary
   (~100 symbols) would make the embedding trivially small, which is not the case this option is for.
   The model is a 1-layer pre-norm causal transformer (d_model 64) with an untied
   ``vocab × 64`` embedding and ``64 × vocab`` head; every optimizer starts from the same weights
   and sees the same batches. Reported: state floats per parameter (whole model, 1-D parameters
   included: they take AdamW's path in ``Kron``), final training loss (mean of the last 20 steps),
   held-out loss, and the mean step time.

State "floats per parameter" = state bytes / parameter bytes (fp32 parameters): AdamW holds 2
(plus a step counter); the goal of ``sketch=True`` is ≤ 2 at a loss no worse than dense ``rank=k``.
Parameters, gradients, batches and optimizer state live on ``--device`` (default ``auto``: CUDA
when available, else the CPU); state sizes do not depend on it, step times do (on CUDA the step
timer synchronises at both ends). The table is printed (pandas + tabulate) and written as CSV to
``--out`` with the device.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import math
import platform
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import tritonkron as tk
from perf.device import add_device_argument, clock, describe_device
from perf.peers import state_bytes
from perf.shapes import DEFAULT_BLOCK_SIZE, GPT2_SMALL

Factory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
BETAS = (0.9, 0.98)


def optimizer_specs(rank: int, sketch_block: int, lr: dict[str, float]) -> dict[str, Factory]:
    """The four optimizers of the comparison, keyed by their row label."""
    return {
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=lr["adamw"], betas=BETAS, weight_decay=0.0),
        "kron full": lambda ps: tk.Kron(ps, lr=lr["kron full"], betas=BETAS),
        f"kron rank={rank} dense": lambda ps: tk.Kron(ps, lr=lr["kron dense"], betas=BETAS, rank=rank),
        f"kron rank={rank} sketch": lambda ps: tk.Kron(
            ps, lr=lr["kron sketch"], betas=BETAS, rank=rank, sketch=True, block_size=sketch_block
        ),
    }


def _dense_unblocked_bytes(m: int, n: int) -> int:
    """Dense Kron state of one unblocked m × n parameter: factors + bases (2(m² + n²)), eigenvalues,
    trace, momentum (fp32), the ready flag and the step counter."""
    return 4 * (2 * (m * m + n * n) + m + n + 1 + m * n) + 1 + 4


def _stepped_state_bytes(
    factory: Factory, shape: tuple[int, int], grad: str, g: torch.Generator, device: torch.device | str
) -> int:
    """State bytes of ``factory``'s optimizer after one step of an fp32 parameter of ``shape`` on ``device``."""
    p = nn.Parameter(torch.empty(shape))
    with torch.no_grad():
        p.normal_(0, 0.02, generator=g)
    p = nn.Parameter(p.detach().to(device))
    p.grad = (torch.randn(shape, generator=g) if grad == "random" else torch.zeros(shape)).to(device)
    opt = factory([p])
    opt.step()
    return state_bytes(opt)


def gpt2_rows(
    rank: int, sketch_block: int, grad: str, device: torch.device | str = "cpu"
) -> list[dict[str, object]]:
    """Per-layer and total state size of GPT-2-small's matrices for each optimizer.

    ``grad="zero"`` allocates the state with an all-zero gradient: every tensor of every optimizer
    is created at its final size on the first step, and ``Kron``'s blocks then wait for their first
    non-zero gradient (whose initialisation replaces tensors by tensors of the same shapes), which
    skips the dense path's d × d eigendecompositions (minutes for the blocked embedding on a CPU).
    The attention projection is always stepped with both gradients and the byte counts checked
    equal. ``grad="random"`` steps every layer with an N(0, 1) gradient.
    """
    specs = optimizer_specs(rank, sketch_block, collections.defaultdict(lambda: 1e-3))
    g = torch.Generator().manual_seed(0)
    check = GPT2_SMALL.layer("attn_proj").shape
    for label, factory in specs.items():
        zero, random = (_stepped_state_bytes(factory, check, kind, g, device) for kind in ("zero", "random"))
        if zero != random:
            raise RuntimeError(f"{label}: state after a zero-gradient step ({zero} B) != random ({random} B)")
    rows: list[dict[str, object]] = []
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for layer in GPT2_SMALL.layers:
        params = layer.count * layer.rows * layer.cols
        for label, factory in specs.items():
            start = time.perf_counter()
            nbytes = _stepped_state_bytes(factory, layer.shape, grad, g, device) * layer.count
            _progress(f"gpt2 {layer.name} {label}: {time.perf_counter() - start:.1f} s")
            rows.append(_row("gpt2-small", layer.name, label, params, nbytes))
            totals[label][0] += params
            totals[label][1] += nbytes
        dense = _dense_unblocked_bytes(layer.rows, layer.cols) * layer.count
        note = f"not allocatable ({dense / 1e9:.1f} GB)" if dense > 4e9 else "analytic"
        label = f"kron rank={rank} dense unblocked"
        rows.append(_row("gpt2-small", layer.name, label, params, dense, note=note))
        totals[label][0] += params
        totals[label][1] += dense
    for label, (params, nbytes) in totals.items():
        note = "includes a non-allocatable factor" if "unblocked" in label else ""
        rows.append(_row("gpt2-small", "all matrices", label, params, nbytes, note=note))
    return rows


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _row(workload: str, layer: str, optimizer: str, params: float, nbytes: float, **extra: object) -> dict:
    return {
        "workload": workload,
        "layer": layer,
        "optimizer": optimizer,
        "params": int(params),
        "state_MB": nbytes / 1e6,
        "floats_per_param": nbytes / (4 * params),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# The language model.
# ---------------------------------------------------------------------------------------------


def load_corpus(max_files: int, vocab: int) -> tuple[torch.Tensor, str]:
    """Token ids of the standard library's .py sources (sorted paths, first ``max_files``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not {"site-packages", "test", "tests"} & set(p.parts))
    files = files[:max_files]
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    tokens = re.findall(r"\w+|[^\w\s]", text)
    keep = [w for w, _ in collections.Counter(tokens).most_common(vocab - 1)]
    index = {w: i + 1 for i, w in enumerate(keep)}  # 0 is <unk>
    ids = torch.tensor([index.get(w, 0) for w in tokens], dtype=torch.long)
    unk = float((ids == 0).float().mean())
    note = (
        f"{len(files)} .py files of the Python {platform.python_version()} standard library under {root} "
        f"({len(text) / 1e6:.1f} MB, {len(tokens) / 1e6:.2f} M word/punctuation tokens, vocab {vocab}, "
        f"{unk:.1%} <unk>)"
    )
    return ids, note


class TinyLM(nn.Module):
    """1-layer pre-norm causal transformer with an untied vocabulary-sized embedding and head."""

    def __init__(self, vocab: int, d_model: int, context: int, heads: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(context, d_model)
        self.block = nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        mask = torch.triu(torch.full((context, context), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:T]
        x = self.block(x, src_mask=self.mask[:T, :T], is_causal=True)
        return self.head(self.ln(x))


def _batch(ids: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = starts.unsqueeze(1) + torch.arange(context + 1)
    chunk = ids[window]
    return chunk[:, :-1], chunk[:, 1:]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def lm_rows(args: argparse.Namespace, specs: dict[str, Factory]) -> tuple[list[dict[str, object]], str]:
    """Train the TinyLM on ``args.device`` with each optimizer from the same weights on the same batches."""
    device = args.device
    ids, note = load_corpus(args.corpus_files, args.vocab)
    ids = ids.to(device)
    split = int(0.9 * len(ids))
    g = torch.Generator().manual_seed(0)
    train_starts = torch.randint(0, split - args.context - 1, (args.lm_steps, args.batch), generator=g)
    val_starts = torch.randint(
        split, len(ids) - args.context - 1, (args.val_batches, args.batch), generator=g
    )
    torch.manual_seed(0)
    init = TinyLM(args.vocab, args.d_model, args.context).state_dict()
    rows = []
    for label, factory in specs.items():
        model = TinyLM(args.vocab, args.d_model, args.context).to(device)
        model.load_state_dict(init)
        opt = factory(model.parameters())
        losses, step_time = [], 0.0
        for starts in train_starts:
            loss = _loss(model, *_batch(ids, starts, args.context))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            start = clock(device)
            opt.step()
            step_time += clock(device) - start
            losses.append(float(loss.detach()))
        with torch.no_grad():
            val = [_loss(model, *_batch(ids, s, args.context)) for s in val_starts]
        params = sum(p.numel() for p in model.parameters())
        final = sum(losses[-20:]) / len(losses[-20:])
        extra = {
            "train_loss": final,
            "val_loss": float(torch.stack(val).mean()),
            "step_ms": 1e3 * step_time / len(losses),
            "lr": opt.param_groups[0]["lr"],
        }
        workload = f"tiny-lm (vocab {args.vocab})"
        rows.append(_row(workload, "whole model", label, params, state_bytes(opt), **extra))
        if not math.isfinite(final):
            rows[-1]["note"] = "diverged"
        _progress(f"lm {label}: train {final:.3f}, {rows[-1]['step_ms']:.0f} ms/step")
    return rows, note


def _verdict(lm: list[dict[str, object]], rank: int) -> str:
    """One line on the goal: sketched state ≤ AdamW's at a loss no worse than dense rank=k."""
    by = {r["optimizer"]: r for r in lm}
    adamw, dense, sketch = by["adamw"], by[f"kron rank={rank} dense"], by[f"kron rank={rank} sketch"]
    state_ok = sketch["floats_per_param"] <= adamw["floats_per_param"]
    loss_ok = sketch["val_loss"] <= dense["val_loss"]
    return (
        f"goal: sketch state {sketch['floats_per_param']:.3f} floats/param "
        f"{'<=' if state_ok else '>'} AdamW {adamw['floats_per_param']:.3f}; sketch held-out loss "
        f"{sketch['val_loss']:.3f} {'<=' if loss_ok else '>'} dense rank={rank} {dense['val_loss']:.3f} "
        f"-> {'met' if state_ok and loss_ok else 'NOT met'}"
    )


def main(argv: list[str] | None = None) -> None:
    """Measure both workloads (unless skipped), print their tables and write the CSV to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpt2-rank", type=int, default=128, help="k for the GPT-2 shapes (ℓ = 2k)")
    parser.add_argument("--lm-rank", type=int, default=16, help="k for the language model (ℓ = 2k)")
    parser.add_argument("--sketch-block-size", type=int, default=1 << 16, help="block_size of sketch=True")
    parser.add_argument("--lm-steps", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--val-batches", type=int, default=20)
    parser.add_argument("--corpus-files", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of every optimizer")
    parser.add_argument(
        "--gpt2-grad", choices=("zero", "random"), default="zero", help="gradient of the allocating step"
    )
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--skip-lm", action="store_true")
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("perf/results/memory.csv"))
    args = parser.parse_args(argv)
    device = describe_device(args.device)

    stamp = dt.datetime.now().isoformat(timespec="seconds")
    machine = platform.processor() or platform.machine()
    print(
        f"# bench_memory  {stamp}  python {platform.python_version()}  torch {torch.__version__}  "
        f"device {device}  {machine}"
    )
    rows: list[dict[str, object]] = []
    if not args.skip_gpt2:
        rows += gpt2_rows(args.gpt2_rank, args.sketch_block_size, args.gpt2_grad, args.device)
        df = pd.DataFrame([r for r in rows if r["workload"] == "gpt2-small"])
        table = df.pivot_table(index="layer", columns="optimizer", values="floats_per_param", sort=False)
        k = args.gpt2_rank
        print(
            f"\n## GPT-2-small matrices: state floats per parameter (k={k}, ℓ={2 * k}, "
            f"dense Kron blocked at {DEFAULT_BLOCK_SIZE}, sketch unblocked)\n"
        )
        print(table.to_markdown(floatfmt=".3f"))
        notes = df[df["note"].fillna("").str.startswith("not allocatable")]
        for _, r in notes.iterrows():
            print(f"- {r['layer']}, {r['optimizer']}: {r['note']}")
    if not args.skip_lm:
        lr = collections.defaultdict(lambda: args.lr)
        lm, note = lm_rows(args, optimizer_specs(args.lm_rank, args.sketch_block_size, lr))
        rows += lm
        print(f"\n## Language model: {note}\n")
        cols = ["optimizer", "params", "state_MB", "floats_per_param", "train_loss", "val_loss", "step_ms"]
        print(pd.DataFrame(lm)[cols].to_markdown(index=False, floatfmt=".3f"))
        print(f"\n{_verdict(lm, args.lm_rank)}")
        for r in lm:
            r["corpus"] = note
    out = pd.DataFrame(rows)
    out["device"] = device
    out["torch"] = torch.__version__
    out["timestamp"] = stamp
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
