"""Coupled Newton iteration for the inverse p-th root A^{-1/p}, p ∈ {2, 4} (batched, symmetric).

Triton twin of ``tritonkron.ops.inverse_root.reference.newton_schulz_inverse_root`` and its single
step ``coupled_newton_step``. With the reference's scaling c (so that spec(A/cᵖ) ⊂ (0, 1]):

    X₀ = I / c,   M₀ = A / cᵖ
    T_k = ((p+1) I − M_k) / p,   X_{k+1} = X_k T_k,   M_{k+1} = T_kᵖ M_k
    X_k → A^{-1/p},  M_k → I,  residual r_k = ‖M_k − I‖_F / √d

Every iterate is a polynomial in A, so X, M, T and all their products are symmetric and commute.
One iteration is a few launches of the symmetric batched GEMM of :mod:`tritonkron.ops._triton.sym_gemm`
with a polynomial epilogue,

    out = α·(P Q) + β·C + γ·I      (only tiles with tile_m ≤ tile_n; each is mirrored)

used as (q = p + 1)::

    X_new = (q/p) X − (1/p) X M                 # = X T: the identity term fused (α=−1/p, C=X)
    T²    = (M M − 2q M + q² I) / p²            # T² without forming T (C=M, γ=q²/p²)
    p = 2:  M_new = T² M                          # + fused residual partial sums
    p = 4:  W = T² M ;  M_new = T² W              # + fused residual partial sums

so an iteration costs 3 (p = 2) or 4 (p = 4) half-GEMMs. The residual of M_new is reduced per
tile in the last GEMM's epilogue (off-diagonal tiles counted twice) into a ``[B, T²]`` buffer
that torch sums; the Python loop stops when every batch element has r ≤ tol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import triton
from torch import Tensor

from tritonkron.math.checks import check_p, check_square, symmetrize
from tritonkron.ops._triton.common import FLOATS, SMEM_BUDGET, is_pow2_tile, legal_configs, resolve_config
from tritonkron.ops._triton.sym_gemm import launch_sym_gemm
from tritonkron.ops.inverse_root.reference import (
    InverseRootResult,
    NewtonProgress,
    RootScaling,
    RootStatus,
    check_newton_options,
    coupled_newton_init,
    newton_residual,
)

__all__ = ["coupled_newton_step_triton", "newton_schulz_configs", "newton_schulz_triton"]


# ---------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------

_KEYS = ("BLOCK", "BLOCK_K", "num_warps", "num_stages")
_ROOTS = (2, 4)  # the p of the fused step (T² once or twice)


def _keep_newton_schulz(cfg: Mapping[str, int]) -> bool:
    """Whether a config is legal: square power-of-two output tiles ≥ 16 (the mirror store needs
    BLOCK_M = BLOCK_N, so there is a single BLOCK), BLOCK_K ≥ 16, warps in {1, …, 16}, and fp32
    operand tiles × stages within the shared-memory budget."""
    if not (is_pow2_tile(cfg["BLOCK"]) and is_pow2_tile(cfg["BLOCK_K"])):
        return False
    if cfg["num_warps"] not in (1, 2, 4, 8, 16) or cfg["num_stages"] < 1:
        return False
    return 4 * cfg["num_stages"] * cfg["BLOCK_K"] * 2 * cfg["BLOCK"] <= SMEM_BUDGET


def newton_schulz_configs() -> list[triton.Config]:
    """Legal tile configs of the symmetric GEMM kernel of the coupled Newton iteration."""
    return legal_configs(_KEYS, ((32, 64, 128), (16, 32, 64), (4, 8), (2, 3, 4)), _keep_newton_schulz)


def _heuristic(d: int) -> dict[str, int]:
    """Default tiles: 64 × 64 with BLOCK_K = 32 (128 × 128 for d ≥ 1024); untuned starting points.
    The interpreter runs the same tiles as a GPU."""
    tile = max(16, min(128 if d >= 1024 else 64, triton.next_power_of_2(d)))
    return {"BLOCK": tile, "BLOCK_K": 32, "num_warps": 8 if tile == 128 else 4, "num_stages": 3}


def _resolve(config: Mapping[str, int] | triton.Config | None, d: int) -> dict[str, int]:
    """An explicit config merged over :func:`_heuristic` and validated."""
    return resolve_config(config, _heuristic(d), _KEYS, _keep_newton_schulz)


def _sym_gemm(
    P: Tensor,
    Q: Tensor,
    out: Tensor,
    cfg: dict[str, int],
    alpha: float = 1.0,
    C: Tensor | None = None,
    beta: float = 0.0,
    gamma: float = 0.0,
    res: Tensor | None = None,
) -> None:
    """out = α·(P Q) + β·C + γ·I for symmetric results; ``res[b, t]`` gets tile partials of ‖out − I‖²."""
    sym_cfg = {"BLOCK_M": cfg["BLOCK"], "BLOCK_K": cfg["BLOCK_K"], "num_warps": cfg["num_warps"],
               "num_stages": cfg["num_stages"]}  # fmt: skip
    launch_sym_gemm(P, Q, out, sym_cfg, c=C, alpha=alpha, beta=beta, gamma=gamma, res=res)


def _step(
    X: Tensor,
    M: Tensor,
    p: int,
    X_out: Tensor,
    M_out: Tensor,
    cfg: dict[str, int],
    res: Tensor | None = None,
    scratch: tuple[Tensor, Tensor] | None = None,
) -> None:
    """One coupled Newton step from (X, M) into (X_out, M_out); none of the four may alias.

    ``scratch``: two ``[B, d, d]`` fp32 buffers for T² and T² M (allocated when None).
    """
    q = p + 1.0
    T2, W = scratch if scratch is not None else (torch.empty_like(M), torch.empty_like(M))
    _sym_gemm(X, M, X_out, cfg, alpha=-1.0 / p, C=X, beta=q / p)  # X T
    _sym_gemm(M, M, T2, cfg, alpha=1.0 / p**2, C=M, beta=-2.0 * q / p**2, gamma=q * q / p**2)  # T²
    if p == 2:
        _sym_gemm(T2, M, M_out, cfg, res=res)  # T² M
    else:
        _sym_gemm(T2, M, W, cfg)  # T² M
        _sym_gemm(T2, W, M_out, cfg, res=res)  # T⁴ M = T² (T² M)


def _square(B: Tensor, cfg: dict[str, int]) -> Tensor:
    """B² of symmetric ``[B, d, d]`` float32 matrices by the symmetric GEMM kernel."""
    out = torch.empty_like(B, memory_format=torch.contiguous_format)
    _sym_gemm(B, B, out, cfg)
    return out


# ---------------------------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------------------------


def _check_iterate(name: str, t: object) -> Tensor:
    """``t`` itself when it is a ``[B, d, d]`` float32 tensor; ValueError naming ``name`` otherwise."""
    return check_square(t, name, ndim=3, dtypes=(torch.float32,), note=" (the iteration needs fp32 accuracy)")


def _check_out(name: str, out: Tensor | None, like: Tensor) -> Tensor:
    """``out`` checked against ``like``'s shape and device, or a new contiguous tensor like it when None."""
    if out is None:
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    _check_iterate(name, out)
    if out.shape != like.shape or out.device != like.device:
        raise ValueError(f"{name} must have shape {list(like.shape)} on {like.device}; got {list(out.shape)}")
    return out


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------


def coupled_newton_step_triton(
    X: Tensor,
    M: Tensor,
    p: int,
    *,
    out: tuple[Tensor, Tensor] | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
) -> tuple[Tensor, Tensor]:
    """Computes ``reference.newton_schulz.coupled_newton_step``: with T = ((p+1) I − M)/p,

        X ← X T,   M ← Tᵖ M.

    Differences from the reference: X and M must be symmetric and commute (true of every iterate
    of the iteration, which starts from X₀ = I/c); only upper tiles are computed and mirrored, so
    the outputs are exactly symmetric; T is never formed (X T = ((p+1) X − X M)/p and
    T² = (M² − 2(p+1) M + (p+1)² I)/p² are GEMM epilogues); fp32 with ``input_precision="ieee"``.

    Args:
        X: ``[B, d, d]`` float32 root iterate; M: ``[B, d, d]`` float32 coupled iterate.
        p: root, 2 or 4.
        out: optional ``(X_new, M_new)`` float32 ``[B, d, d]``, distinct from X and M.
        config: ``BLOCK``, ``BLOCK_K``, ``num_warps``, ``num_stages``; None → heuristic.

    Returns:
        ``(X_new, M_new)``.

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), p ∉ {2, 4},
            aliased outputs or an illegal config.
    """
    _check_iterate("X", X)
    _check_iterate("M", M)
    if M.shape != X.shape or M.device != X.device:
        raise ValueError(f"M must have X's shape {list(X.shape)} and device; got {list(M.shape)}")
    p = check_p(p, _ROOTS)
    X_out, M_out = out if out is not None else (None, None)
    X_out, M_out = _check_out("out[0]", X_out, X), _check_out("out[1]", M_out, M)
    if any(o.data_ptr() in (X.data_ptr(), M.data_ptr()) for o in (X_out, M_out) if o.numel()):
        raise ValueError("out must not alias X or M")
    cfg = _resolve(config, X.shape[-1])
    if X.numel():
        _step(X, M, p, X_out, M_out, cfg, None)
    return X_out, M_out


def _check_newton_args(
    A: object, p: object, max_iters: object, tol: object, scaling: object, out: object
) -> tuple[int, int, float, RootScaling]:
    """Validates the arguments of :func:`newton_schulz_triton`; returns (p, max_iters, tol, scaling).

    Raises:
        ValueError: as documented by :func:`newton_schulz_triton`.
    """
    check_square(A, dtypes=FLOATS, finite=True, note=" (float64: use the reference)")
    p = check_p(p, _ROOTS)
    max_iters, tol, scaling = check_newton_options(max_iters, tol, scaling, torch.float32)
    if out is not None and (not isinstance(out, Tensor) or out.shape != A.shape or out.dtype != A.dtype
                            or out.device != A.device):  # fmt: skip
        raise ValueError(f"out must be a {A.dtype} tensor of shape {list(A.shape)} on {A.device}")
    return p, max_iters, tol, scaling


def _newton_start(
    S: Tensor, p: int, scaling: RootScaling, cfg: dict[str, int], tol: float
) -> tuple[Tensor, Tensor, NewtonProgress]:
    """The reference's scaled start X₀ = I/c, M₀ = S/cᵖ (the bound's squarings on the kernel) and
    the progress at step 0."""
    X, M = coupled_newton_init(S, p, scaling=scaling, square=lambda B: _square(B, cfg))
    return X, M, NewtonProgress.start(X, newton_residual(M), tol)


def _newton_loop(
    X: Tensor, M: Tensor, p: int, cfg: dict[str, int], progress: NewtonProgress, max_iters: int
) -> int:
    """Steps (X, M) until every member has finished or ``max_iters`` steps ran, recording each step
    in ``progress`` (finished members frozen); returns the number of steps."""
    d = X.shape[-1]
    X_new, M_new = torch.empty_like(X), torch.empty_like(M)
    scratch = (torch.empty_like(M), torch.empty_like(M))
    num_t = triton.cdiv(d, cfg["BLOCK"])
    partial = torch.zeros(X.shape[0], num_t * num_t, dtype=torch.float32, device=X.device)
    iterations = 0
    while iterations < max_iters and bool((active := progress.active()).any()):
        _step(X, M, p, X_new, M_new, cfg, res=partial, scratch=scratch)
        iterations += 1
        r = partial.sum(dim=-1).sqrt() / math.sqrt(d)  # ‖M_new − I‖_F/√d, from the fused partials
        finite = torch.isfinite(r) & torch.isfinite(X_new).all(dim=-1).all(dim=-1)
        if bool(active.all()):  # swap buffers; no member is frozen
            X, X_new, M, M_new = X_new, X, M_new, M
        else:
            keep = active[:, None, None]
            X, M = torch.where(keep, X_new, X), torch.where(keep, M_new, M)  # fresh tensors
        progress.record(X, r, finite, active)
    return iterations


def newton_schulz_triton(
    A: Tensor,
    p: int,
    *,
    max_iters: int = 100,
    tol: float | None = None,
    scaling: str | RootScaling = "lambda_max",
    out: Tensor | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
) -> InverseRootResult:
    """Computes ``reference.newton_schulz.newton_schulz_inverse_root`` for p ∈ {2, 4}:

        X₀ = I/c,  M₀ = A/cᵖ (cᵖ = β ≥ λ_max(A));   T_k = ((p+1) I − M_k)/p,
        X_{k+1} = X_k T_k,  M_{k+1} = T_kᵖ M_k,  r_k = ‖M_k − I‖_F/√d.

    Same scaling, stopping rule (converged r ≤ tol; diverged on non-finite r or X, or r above
    1.5× its best for 3 consecutive steps; finished members frozen), returned iterate (the one
    with the smallest residual) and status as the reference. Differences: each step is 3 (p = 2)
    or 4 (p = 4) launches of the symmetric GEMM kernel (upper tiles, mirrored, so every iterate
    is exactly symmetric) with the polynomial epilogues and, in the last launch, the residual's
    per-tile partial sums; the λ_max bound's squarings use the same kernel; fp32 throughout with
    ``input_precision="ieee"``. The Python loop synchronises with the host once per step.

    Args:
        A: ``[..., d, d]`` symmetric positive definite; float32 (float16/bfloat16 are computed in
            float32, like the reference); symmetrised as (A + Aᵀ)/2; any strides.
        p: root, 2 or 4.
        max_iters: maximum number of steps (≥ 0).
        tol: residual tolerance (≥ 0); None → 1e-6.
        scaling: "lambda_max" (default), "frobenius" or "trace" (``RootScaling``).
        out: optional ``[..., d, d]`` tensor for the root (A's dtype); filled and returned as
            ``result.root``.
        config: ``BLOCK``, ``BLOCK_K``, ``num_warps``, ``num_stages``; None → heuristic.

    Returns:
        ``InverseRootResult(root, status, residual [...], iterations, converged [...])``.

    Raises:
        ValueError: invalid A (not a square float32/float16/bfloat16 tensor, non-finite), p,
            max_iters, tol, scaling, out or config.
    """
    p, max_iters, tol, scaling = _check_newton_args(A, p, max_iters, tol, scaling, out)
    batch, d = A.shape[:-2], A.shape[-1]
    cfg = _resolve(config, d)
    S = symmetrize(A.reshape(-1, d, d).float())  # [B, d, d], contiguous
    if S.numel() == 0:
        ok = torch.ones(batch, dtype=torch.bool, device=A.device)
        root = out if out is not None else torch.empty_like(A)
        return InverseRootResult(root, RootStatus.CONVERGED, ok.float() * 0, 0, ok)

    X, M, progress = _newton_start(S, p, scaling, cfg, tol)
    iterations = _newton_loop(X, M, p, cfg, progress, max_iters)
    status, best, converged = progress.status(), progress.best, progress.converged
    X_best = progress.X_best
    root = X_best.to(A.dtype).reshape(A.shape)
    if out is not None:
        root = out.copy_(root)
    return InverseRootResult(root, status, best.reshape(batch), iterations, converged.reshape(batch))
