"""A tiny real model for the autotune tests: a two-layer MLP on scikit-learn's handwritten digits.

``make()`` is a ``python -m autotune --model tests.autotune.digits_model:make`` factory (the CLI
passes its ``--device`` as ``make(device=...)``). The two
weight matrices see very different statistics: the first layer's input side is the 64 pixel
features (a few dominant principal components, constant-zero border pixels), the second layer's
output side the 10 class logits, so their factor spectra (and ranks) differ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

BATCH = 64
HIDDEN = 32


def digits() -> tuple[Tensor, Tensor]:
    """Digits features ``[1797, 64]`` (scaled to [0, 1], centred) and labels ``[1797]``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.data / 16.0).astype(np.float32))
    return x - x.mean(0), torch.from_numpy(data.target.astype(np.int64))


def make(
    seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """``(model, loss_fn)`` on ``device``: a 64-32-10 ReLU MLP and the cross-entropy of a fresh random batch."""
    torch.manual_seed(seed)
    x, y = (t.to(device) for t in digits())
    model = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10)).to(device)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(m: nn.Module) -> Tensor:
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen).to(device)
        return F.cross_entropy(m(x[idx]), y[idx])

    return model, loss_fn
