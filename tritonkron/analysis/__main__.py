"""Command line: the spectral / Hessian-alignment study on a real workload (docs/maths.md §3).

Usage (from any directory; ``--out`` is relative to it)::

    python -m tritonkron.analysis [--workload fashion_mnist|digits] [--steps N] [--samples S]
                                  [--out docs/analysis] [--discussion FILE]

A small ReLU MLP is trained briefly with AdamW on an image-classification data set from
:mod:`tritonkron.analysis.data`: Fashion-MNIST when Debian's ``dataset-fashion-mnist`` files are
installed, otherwise scikit-learn's bundled digits (``pip install "tritonkron[analysis]"``; nothing
is downloaded). At that point, S minibatch gradients are sampled per weight matrix, each layer's
covariance is analysed densely (layers with mn ≤ ``--max-dim``; larger ones on a random sub-grid
plus full-layer factor statistics), and the top eigenvectors are compared with the layer's
Gauss–Newton matrix on ``--resamples`` fresh curvature batches. The report (Markdown, PNG, CSV)
goes to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tritonkron.analysis.data import (
    FASHION_MNIST_ROOT,
    WORKLOADS,
    MissingDataError,
    load_image_classification,
)
from tritonkron.analysis.report import write_report
from tritonkron.analysis.study import run_study


class _Progress:
    """tqdm when installed, else a plain counter on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.last = total, 0, 0.0
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, unit="step")
        except ImportError:
            self.bar = None

    def __call__(self, units: int, what: str) -> None:
        self.done += units
        if self.bar is not None:
            self.bar.set_description(what, refresh=False)
            self.bar.update(units)
            return
        now = time.monotonic()
        if now - self.last > 0.5 or self.done >= self.total:
            self.last = now
            print(f"\r[{self.done}/{self.total}] {what:<40}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)


def make_mlp(num_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """ReLU MLP ``num_features → hidden… → num_classes``."""
    layers: list[nn.Module] = []
    sizes = [num_features, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)


def forward(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Logits of a batch ``(x, y)``."""
    return model(batch[0])


def criterion(logits: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean cross-entropy."""
    return F.cross_entropy(logits, batch[1])


def _batches(
    x: Tensor, y: Tensor, count: int, size: int, gen: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """``count`` minibatches of ``size`` examples drawn uniformly (with replacement: i.i.d. batches)."""
    for _ in range(count):
        idx = torch.randint(x.shape[0], (size,), generator=gen)
        yield x[idx], y[idx]


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """AdamW for ``steps`` minibatches; returns the full-training-set loss afterwards."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for batch in _batches(x, y, steps, batch_size, gen):
        opt.zero_grad(set_to_none=True)
        criterion(forward(model, batch), batch).backward()
        opt.step()
    with torch.no_grad():
        return float(criterion(model(x), (x, y)))


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m tritonkron.analysis",
        description="The spectral / Hessian-alignment study of the three Kronecker divergences on the "
        "gradients of a small MLP trained on real images; writes a Markdown report with PNGs and CSVs. "
        "Data are read from installed files only, never downloaded.",
    )
    p.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="fashion_mnist",
        help=f"fashion_mnist (default): Debian's dataset-fashion-mnist files in {FASHION_MNIST_ROOT}, "
        "falling back to digits when they are absent; digits: scikit-learn's bundled 8x8 digits "
        '(pip install "tritonkron[analysis]")',
    )
    p.add_argument("--steps", type=int, default=300, help="AdamW training steps before sampling")
    p.add_argument("--samples", type=int, default=4096, help="S, gradient samples (minibatches)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (training and samples)")
    p.add_argument("--hidden", default="32,32", help="hidden widths, comma-separated")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-dim", type=int, default=2048, help="dense covariance up to mn coordinates")
    p.add_argument("--damping", type=float, default=1e-3, help="relative damping of C: + delta tr(C)/d I")
    p.add_argument("--top-k", type=int, default=16, help="eigendirections counted as 'top'")
    p.add_argument("--k-max", type=int, default=64, help="largest k of the overlap curves")
    p.add_argument("--resamples", type=int, default=3, help="curvature batches / bootstrap resamples")
    p.add_argument("--curvature-batch", type=int, default=1024, help="examples per curvature batch")
    p.add_argument("--kind", choices=("ggn", "hessian"), default="ggn")
    p.add_argument("--limit", type=int, default=None, help="cap on Fashion-MNIST examples per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/analysis", help="report folder (default docs/analysis)")
    p.add_argument("--discussion", default=None, help="Markdown file for the Discussion section")
    p.add_argument("--dpi", type=int, default=90)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study and write its report; returns the exit status (2 when no data set can be loaded)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    torch.manual_seed(args.seed)
    try:
        data = load_image_classification(prefer=args.workload, limit=args.limit)
    except MissingDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    model = make_mlp(data.num_features, hidden, data.num_classes)
    loss = train(model, data.x_train, data.y_train, args.steps, args.batch_size, args.lr, args.seed)
    model = model.double().eval()
    x, y = data.x_train.double(), data.y_train
    with torch.no_grad():
        acc = float((model(data.x_test.double()).argmax(1) == data.y_test).double().mean())
    gen = torch.Generator().manual_seed(args.seed + 1)
    curvature = list(_batches(x, y, args.resamples, args.curvature_batch, gen))
    mats = [p for p in model.parameters() if p.dim() >= 2]
    n_subset = sum(p.numel() > args.max_dim for p in mats)
    total = args.samples + len(mats) * (4 + args.resamples) + n_subset * args.resamples + 1
    command = " ".join(["python -m tritonkron.analysis", *(sys.argv[1:] if argv is None else argv)])
    meta = {
        "command": f"`{command}`",
        "workload": data.note,
        "model": f"MLP {data.num_features}-{'-'.join(map(str, hidden))}-{data.num_classes}, ReLU, float64 for the analysis",
        "training": f"AdamW lr {args.lr}, wd 0.01, {args.steps} steps of batch {args.batch_size}, seed {args.seed}",
        "state studied": f"train loss {loss:.4f}, test accuracy {acc:.4f}",
        "gradient samples": f"S = {args.samples} minibatch gradients (batch {args.batch_size}) per layer",
        "covariance": f"uncentred, damped C + {args.damping:g} tr(C)/d I; dense up to {args.max_dim} coordinates",
        "top-k": str(args.top_k),
        "curvature": f"{args.kind.upper()} on {args.resamples} batches of {args.curvature_batch}; Lanczos top {args.k_max}",
    }
    progress = _Progress(total)
    study = run_study(
        model, forward, criterion, _batches(x, y, args.samples, args.batch_size, gen), curvature,
        max_dim=args.max_dim, damping=args.damping, top_k=args.top_k, k_max=args.k_max, kind=args.kind,
        seed=args.seed, meta=meta, progress=progress,
    )  # fmt: skip
    progress.close()
    threads = torch.get_num_threads()
    study.meta["runtime"] = f"{time.monotonic() - start:.0f} s on {threads} CPU thread{'s' * (threads != 1)}"
    discussion = None
    if args.discussion:
        with open(args.discussion, encoding="utf-8") as fh:
            discussion = fh.read()
    path = write_report(study, args.out, discussion=discussion, dpi=args.dpi)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
