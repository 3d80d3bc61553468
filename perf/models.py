"""Small models for the CPU benchmarks: a character-level GPT, a small CNN, and (from ``perf.demo_training``) an MLP.

Sizes are chosen so that a run of a few hundred steps takes seconds on 2 CPU cores:

==============================  ===========================  ==========
model                           default configuration        parameters
==============================  ===========================  ==========
:class:`CharGPT`                d 128, 2 layers, 4 heads,    ≈ 0.42 M
                                context 64, vocab ≈ 80
:class:`SmallCNN` (28×28)       16 → 32 channels, fc 64      ≈ 0.11 M
``make_mlp`` 784-256-256-10     ReLU                         ≈ 0.27 M
==============================  ===========================  ==========

Parameter naming matters to :mod:`perf.peers`: Muon-style optimizers skip ``nn.Embedding`` weights
and the LM ``head`` (they take AdamW, as Muon's authors recommend for input and output layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perf.demo_training import make_mlp

__all__ = ["CharGPT", "SmallCNN", "count_parameters", "make_mlp"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then a 4× GELU MLP, both residual."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, T, d] → [B, T, d]."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        # [B, T, d] -> [B, H, T, d/H]
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """A GPT-style character language model (nanoGPT layout, no dropout, untied head).

    Args:
        vocab_size: number of distinct characters.
        context: maximum sequence length T (learned positional embeddings).
        d_model: residual width.
        n_layer: number of transformer blocks.
        n_head: attention heads per block.
    """

    def __init__(
        self, vocab_size: int, context: int = 64, d_model: int = 128, n_layer: int = 2, n_head: int = 4
    ) -> None:
        super().__init__()
        self.context = context
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(_init_weights)

    def forward(self, idx: Tensor) -> Tensor:
        """Token ids ``idx`` [B, T] (T ≤ context) → logits [B, T, vocab]."""
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.context}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class SmallCNN(nn.Module):
    """Two 3×3 conv + ReLU + 2×2 max-pool stages, then a two-layer classifier.

    Args:
        image_size: side of the square single-channel input (28 for Fashion-MNIST, 8 for digits).
        num_classes: number of classes.
        channels: output channels of the two conv stages.
        hidden: width of the hidden fully connected layer.
    """

    def __init__(
        self, image_size: int, num_classes: int, channels: tuple[int, int] = (16, 32), hidden: int = 64
    ) -> None:
        super().__init__()
        c1, c2 = channels
        side = image_size // 4  # two 2×2 pools (floor)
        if side < 1:
            raise ValueError(f"image_size must be at least 4; got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Images ``x`` [B, 1, H, W] (or flat [B, H·W]) → logits [B, num_classes]."""
        if x.dim() == 2:
            side = int(round(x.shape[1] ** 0.5))
            x = x.view(x.shape[0], 1, side, side)
        return self.classifier(self.features(x))
