"""Registry of real layer shapes for benchmarks: scripts take their shapes from here, never literals.

Models (weights written ``rows × cols`` as the brief's (in, out) layout: GPT-2's ``Conv1D`` stores
``[in, out]``; Llama's MLP is listed the same way):

========================  ======================  =====================================
model / layer             rows × cols             count in the model
========================  ======================  =====================================
gpt2-small attn_qkv       768 × 2304              12 (one per layer)
gpt2-small attn_proj      768 × 768               12
gpt2-small mlp_fc         768 × 3072              12
gpt2-small mlp_proj       3072 × 768              12
gpt2-small wte            50257 × 768             1 (token embeddings)
llama-7b attn_qkvo        4096 × 4096             128 (q, k, v, o in each of 32 layers)
llama-7b mlp_gate_up      4096 × 11008            64 (gate and up)
llama-7b mlp_down         11008 × 4096            32
========================  ======================  =====================================

A layer and a block size (default 1024, ``tk.Kron``'s default) give stacked block shapes
``[B, m, n]`` through :meth:`tritonkron.math.blocking.BlockLayout.build`, exactly as the
optimizer stacks them: qkv 768 × 2304 → ``[3, 768, 768]``; wte → ``[7, 1006, 768]`` and
``[43, 1005, 768]``; Llama's 4096 × 11008 → ``[32, 1024, 1001]`` and ``[12, 1024, 1000]``.

The ``tiny`` model (d_model 16, block size 16) is the CPU smoke-test stand-in: the same layer
kinds, every block ≤ 32, and an embedding whose rows split into unequal blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonkron.math.blocking import BlockLayout

__all__ = [
    "CORRECTNESS_BLOCKS_CPU",
    "CORRECTNESS_BLOCKS_GPU",
    "DEFAULT_BLOCK_SIZE",
    "GPT2_SMALL",
    "LLAMA_7B",
    "MODELS",
    "NS_BLOCKS_CPU",
    "NS_CORRECTNESS_GPU",
    "NS_TIMING_GPU",
    "NS_TIMING_GPU_QUICK",
    "TIMING_BLOCKS_CPU",
    "TIMING_BLOCKS_GPU",
    "TIMING_BLOCKS_GPU_QUICK",
    "TINY",
    "TINY_BLOCK_SIZE",
    "BlockShape",
    "LayerShape",
    "ModelShapes",
    "block_shapes",
    "factor_shape",
    "model_block_shapes",
    "per_block_matrices",
    "spike_rank",
    "unique_shapes",
]

DEFAULT_BLOCK_SIZE = 1024
"""``tk.Kron``'s default ``block_size``: the largest preconditioned dimension."""

TINY_BLOCK_SIZE = 16
"""Block size of the CPU smoke run (so that blocking and stacking are exercised on tiny shapes)."""

_SPIKE_RANK_DIVISOR = 8  # spike-and-flat benchmarks keep the top d/8 directions (128 of 1024)


@dataclass(frozen=True)
class LayerShape:
    """One kind of weight matrix of a model.

    Attributes:
        name: layer kind, e.g. ``"attn_qkv"``.
        rows: first dimension (the preconditioner's m before blocking).
        cols: second dimension (n before blocking).
        count: how many matrices of this kind the model has.
        in_block: whether one transformer block holds one of them (the step benchmark's layer set).
    """

    name: str
    rows: int
    cols: int
    count: int
    in_block: bool = True

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return self.rows, self.cols


@dataclass(frozen=True)
class ModelShapes:
    """The matrix shapes of one model.

    Attributes:
        name: model name used in result rows (``"gpt2-small"``).
        d_model: residual width.
        n_layer: number of transformer blocks.
        layers: the weight kinds with their counts.
    """

    name: str
    d_model: int
    n_layer: int
    layers: tuple[LayerShape, ...]

    def layer(self, name: str) -> LayerShape:
        """The layer kind called ``name``.

        Raises:
            KeyError: if the model has no such layer.
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.name} has no layer {name!r}; layers: {[x.name for x in self.layers]}")

    def transformer_block(self) -> tuple[LayerShape, ...]:
        """The matrices of one transformer block (embeddings excluded)."""
        return tuple(layer for layer in self.layers if layer.in_block)


@dataclass(frozen=True)
class BlockShape:
    """A stack of equal-shape blocks ``[B, m, n]`` as the optimizer batches them.

    Attributes:
        name: ``"<model>/<layer>"``, with ``"@<m>x<n>"`` appended when a layer splits into blocks
            of more than one shape.
        B: number of stacked blocks.
        m: block rows.
        n: block columns.
        count: how many such stacks the model runs per step (the layer's count).
    """

    name: str
    B: int
    m: int
    n: int
    count: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, m, n)``."""
        return self.B, self.m, self.n

    def __str__(self) -> str:
        return f"{self.name}[{self.B}, {self.m}, {self.n}]"


def _gpt2_like(name: str, d_model: int, n_layer: int, vocab: int) -> ModelShapes:
    """A GPT-2-style transformer: per layer a fused QKV, the attention projection and a 4× MLP; the
    token embedding ``[vocab, d_model]`` outside the blocks."""
    d, n = d_model, n_layer
    return ModelShapes(
        name=name,
        d_model=d,
        n_layer=n,
        layers=(
            LayerShape("attn_qkv", d, 3 * d, count=n),
            LayerShape("attn_proj", d, d, count=n),
            LayerShape("mlp_fc", d, 4 * d, count=n),
            LayerShape("mlp_proj", 4 * d, d, count=n),
            LayerShape("wte", vocab, d, count=1, in_block=False),
        ),
    )


GPT2_SMALL = _gpt2_like("gpt2-small", d_model=768, n_layer=12, vocab=50257)

LLAMA_7B = ModelShapes(
    name="llama-7b",
    d_model=4096,
    n_layer=32,
    layers=(
        LayerShape("attn_qkvo", 4096, 4096, count=4 * 32),
        LayerShape("mlp_gate_up", 4096, 11008, count=2 * 32),
        LayerShape("mlp_down", 11008, 4096, count=32),
    ),
)

TINY = _gpt2_like("tiny", d_model=16, n_layer=1, vocab=40)

MODELS: dict[str, ModelShapes] = {m.name: m for m in (GPT2_SMALL, LLAMA_7B, TINY)}


def block_shapes(
    model: ModelShapes, layer: LayerShape, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[BlockShape, ...]:
    """Stacked block shapes ``[B, m, n]`` of one layer, one per block group of its layout.

    Args:
        model: the model the layer belongs to (for the name).
        layer: the weight kind.
        block_size: largest block dimension (``tk.Kron``'s ``block_size``).

    Returns:
        One :class:`BlockShape` per group of ``BlockLayout.build(layer.shape, block_size)``.
    """
    groups = BlockLayout.build(layer.shape, block_size).groups
    base = f"{model.name}/{layer.name}"
    out = []
    for group in groups:
        m, n = group.shape
        name = base if len(groups) == 1 else f"{base}@{m}x{n}"
        out.append(BlockShape(name, len(group.offsets), m, n, layer.count))
    return tuple(out)


def model_block_shapes(model: ModelShapes, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[BlockShape, ...]:
    """Every stacked block shape of ``model`` (all layers, all groups), in layer order."""
    return tuple(s for layer in model.layers for s in block_shapes(model, layer, block_size))


def per_block_matrices(layer: LayerShape, block_size: int = DEFAULT_BLOCK_SIZE) -> list[tuple[int, int]]:
    """The ``(m, n)`` of each single block of ``layer``: one entry per block, not per group.

    The per-block loop baseline of the step benchmark makes each of these a separate parameter.
    """
    layout = BlockLayout.build(layer.shape, block_size)
    return [group.shape for group in layout.groups for _ in group.offsets]


def spike_rank(d: int) -> int:
    """Rank k kept by the spike-and-flat benchmarks for a factor of size d (d/8, at least 1)."""
    return max(1, d // _SPIKE_RANK_DIVISOR)


def _reduced(shape: BlockShape, B: int) -> BlockShape:
    """``shape`` with at most B stacked blocks (correctness runs need real m × n, not the full stack)."""
    return BlockShape(shape.name, min(B, shape.B), shape.m, shape.n, shape.count)


# Correctness shapes. GPU: odd sizes that cross tiles, then real GPT-2 and Llama blocks (the long
# inner dimensions are where fp32 accumulation error shows). CPU: the same idea at ≤ 32.
CORRECTNESS_BLOCKS_GPU: tuple[BlockShape, ...] = (
    BlockShape("odd", 2, 33, 20),
    BlockShape("tile-crossing", 3, 130, 257),
    _reduced(block_shapes(GPT2_SMALL, GPT2_SMALL.layer("attn_qkv"))[0], 3),
    _reduced(block_shapes(LLAMA_7B, LLAMA_7B.layer("mlp_gate_up"))[0], 2),
)
CORRECTNESS_BLOCKS_CPU: tuple[BlockShape, ...] = (
    BlockShape("odd", 2, 9, 20),
    BlockShape("tile-crossing", 1, 24, 17),
)


def factor_shape(block: BlockShape, side: str = "left") -> BlockShape:
    """The stacked factor shape ``[B, d, d]`` of ``block`` (d = m for "left", n for "right")."""
    d = block.m if side == "left" else block.n
    return BlockShape(f"{block.name}:factor_{side}", block.B, d, d, block.count)


# Newton–Schulz inverse roots of the factors (square [B, d, d]): few shapes, because each call
# runs ~10–20 iterations of 3–4 d³ GEMMs.
_GPT2_QKV = block_shapes(GPT2_SMALL, GPT2_SMALL.layer("attn_qkv"))[0]
_LLAMA_QKVO = block_shapes(LLAMA_7B, LLAMA_7B.layer("attn_qkvo"))[0]
NS_CORRECTNESS_GPU: tuple[BlockShape, ...] = (BlockShape("ns-odd", 2, 257, 257), factor_shape(_GPT2_QKV))
NS_TIMING_GPU: tuple[BlockShape, ...] = (factor_shape(_GPT2_QKV), factor_shape(_LLAMA_QKVO))
NS_TIMING_GPU_QUICK: tuple[BlockShape, ...] = NS_TIMING_GPU[:1]
NS_BLOCKS_CPU: tuple[BlockShape, ...] = (BlockShape("ns-odd", 2, 12, 12),)


def unique_shapes(shapes: tuple[BlockShape, ...] | list[BlockShape]) -> tuple[BlockShape, ...]:
    """``shapes`` without repeated ``(B, m, n)`` (the first name is kept)."""
    seen: dict[tuple[int, int, int], BlockShape] = {}
    for s in shapes:
        seen.setdefault(s.shape, s)
    return tuple(seen.values())


# Op timing: every stacked block shape of GPT-2-small and Llama-7B at the default block size; the
# quick subset keeps one attention stack of each model.
TIMING_BLOCKS_GPU: tuple[BlockShape, ...] = unique_shapes(
    model_block_shapes(GPT2_SMALL) + model_block_shapes(LLAMA_7B)
)
TIMING_BLOCKS_GPU_QUICK: tuple[BlockShape, ...] = (_GPT2_QKV, _LLAMA_QKVO)
TIMING_BLOCKS_CPU: tuple[BlockShape, ...] = (
    block_shapes(TINY, TINY.layer("attn_qkv"), TINY_BLOCK_SIZE)[0],
    block_shapes(TINY, TINY.layer("wte"), TINY_BLOCK_SIZE)[-1],
)
