"""The one place that chooses a backend for every heavy op.

Each op takes ``backend="auto" | "triton" | "reference"`` (default: the environment variable
``TRITONKRON_BACKEND``, else "auto"). "auto" runs the Triton kernel for CUDA tensors when Triton is
importable and the kernel takes the operands' dtypes (:data:`tritonkron.ops.kernel_guard.TRITON_DTYPES`),
and the pure-PyTorch reference otherwise; "triton" forces the kernel (on CPU tensors this needs
``TRITON_INTERPRET=1``), except for dtypes it has no kernel for, which take the reference with one
warning; "reference" forces the reference. A kernel that fails at run time (compile error, out of
resources) disables its op for the process with one warning, and the reference takes over
(:func:`tritonkron.ops.kernel_guard.guarded`). The Triton paths are registered as ``torch.library``
custom ops (``tritonkron::<op>``) so that ``torch.compile`` treats each launch as one opaque node.

Ops: :func:`factor_update`, :func:`precondition`, :func:`spike_and_flat`,
:func:`track_eigenvalues`, :func:`rotate`, :func:`rotate_back`, :func:`rotated_statistics`,
:func:`inverse_root`, :func:`sketch_update`, :func:`sketch_precondition`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tritonkron import _env
from tritonkron.ops import kernel_guard
from tritonkron.ops._triton import HAS_TRITON
from tritonkron.ops.factor_update import reference as _factor_update_ref
from tritonkron.ops.precondition import reference as _precondition_ref
from tritonkron.ops.rotation import reference as _rotation_ref

Backend = Literal["auto", "triton", "reference"]
Weight = Tensor | tuple[Tensor, Tensor] | None


def on_cuda_device(tensors: tuple[Tensor, ...]) -> bool:
    """Whether every tensor is on a CUDA device (the condition for "auto" to consider Triton)."""
    return all(t.is_cuda for t in tensors)


def resolve_backend(
    backend: str | None, *tensors: Tensor, op: str | None = None
) -> Literal["triton", "reference"]:
    """Return "triton" or "reference" for ``backend`` (None: the library default) and the inputs.

    With ``op`` (a key of :data:`tritonkron.ops.kernel_guard.TRITON_DTYPES`), inputs that op's kernels
    do not take, and an op disabled by a failure, resolve to "reference" (module docstring).

    Raises:
        ValueError: for an unknown backend name, or "triton" when Triton cannot run the inputs.
    """
    choice = _env.default_backend() if backend is None else backend
    if choice not in _env.BACKENDS:
        allowed = ", ".join(repr(b) for b in _env.BACKENDS)
        raise ValueError(f"backend must be one of {allowed}; got {backend!r}")
    on_cuda = on_cuda_device(tensors)
    if choice == "reference":
        return "reference"
    if choice == "auto":
        if not (HAS_TRITON and on_cuda):
            return "reference"
        return "triton" if op is None or kernel_guard.supports(op, tensors) else "reference"
    if not HAS_TRITON:
        raise ValueError("backend='triton' needs the triton package, which is not importable")
    if not on_cuda and not _env.triton_interpret():
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton)"
        )
    return "triton" if op is None or kernel_guard.supports(op, tensors, warn=True) else "reference"


def _scale_tensor(scale: Tensor | float, like: Tensor) -> Tensor:
    batch = like.shape[0]
    if isinstance(scale, Tensor):
        return scale.reshape(-1).expand(batch).to(like.device)
    return torch.full((batch,), float(scale), dtype=like.dtype, device=like.device)


def factor_update(
    X: Tensor,
    G: Tensor,
    beta: float,
    scale: Tensor | float,
    side: Literal["left", "right"],
    weight: Weight = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """X ← β·X + s·G W Gᵀ (left, ``[B, m, m]``) or β·X + s·Gᵀ W G (right, ``[B, n, n]``), out of place.

    See :func:`tritonkron.ops.factor_update.reference.factor_update_ref` for the arguments.
    """
    if resolve_backend(backend, X, G, op="factor_update") == "reference":
        return _factor_update_ref.factor_update_ref(X, G, beta, scale, side, weight)
    W, Q, w = (weight, None, None) if isinstance(weight, Tensor) or weight is None else (None, *weight)
    return torch.ops.tritonkron.factor_update(X, G, float(beta), _scale_tensor(scale, X), side, W, Q, w)


def precondition(
    M: Tensor, Q_A: Tensor, Q_B: Tensor, s_A: Tensor, s_B: Tensor, eps: float, *, backend: str | None = None
) -> Tensor:
    """U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ, Σ = σ/(1 + εσ), σ = s_A s_Bᵀ (``[B, m, n]``).

    See :func:`tritonkron.ops.precondition.reference.eigenbasis_precondition_ref`.
    """
    if resolve_backend(backend, M, Q_A, Q_B, op="precondition") == "reference":
        return _precondition_ref.eigenbasis_precondition_ref(M, Q_A, Q_B, s_A, s_B, eps)
    return torch.ops.tritonkron.precondition(M, Q_A, Q_B, s_A, s_B, float(eps))


def spike_and_flat(
    U_k: Tensor, top_scales: Tensor, c: Tensor, Y: Tensor, *, backend: str | None = None
) -> Tensor:
    """P_X Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y, the low-rank spike-and-flat preconditioner.

    See :func:`tritonkron.ops.precondition.reference.spike_and_flat_apply`.
    """
    if resolve_backend(backend, U_k, Y, op="spike_and_flat") == "reference":
        return _precondition_ref.spike_and_flat_apply(U_k, top_scales, c, Y)
    return torch.ops.tritonkron.spike_and_flat(U_k, top_scales, c, Y)


def track_eigenvalues(
    a: Tensor,
    b: Tensor,
    G_hat: Tensor,
    left_weight: Tensor | None,
    left_scale: Tensor,
    right_weight: Tensor | None,
    right_scale: Tensor,
    beta: float,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j and b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i.

    See :func:`tritonkron.math.divergences.track_eigenvalues` (weights None mean all ones).
    """
    if resolve_backend(backend, a, G_hat, op="track_eigenvalues") == "reference":
        from tritonkron.math.divergences import Coupling
        from tritonkron.math.divergences import track_eigenvalues as _track_ref

        return _track_ref(a, b, G_hat, Coupling(left_weight, left_scale, right_weight, right_scale), beta)
    out = torch.ops.tritonkron.track_eigenvalues(
        a, b, G_hat, left_weight, left_scale, right_weight, right_scale, float(beta)
    )
    return out[0], out[1]


def rotate(X: Tensor, Q_A: Tensor, Q_B: Tensor, *, backend: str | None = None) -> Tensor:
    """X̂ = Q_Aᵀ X Q_B (``[B, m, n]``); see :mod:`tritonkron.ops.rotation.reference`."""
    if resolve_backend(backend, X, Q_A, Q_B, op="rotate") == "reference":
        return _rotation_ref.rotate_ref(X, Q_A, Q_B)
    return torch.ops.tritonkron.rotate(X, Q_A, Q_B, False)


def rotate_back(X_hat: Tensor, Q_A: Tensor, Q_B: Tensor, *, backend: str | None = None) -> Tensor:
    """X = Q_A X̂ Q_Bᵀ (``[B, m, n]``), the inverse of :func:`rotate` for orthogonal bases."""
    if resolve_backend(backend, X_hat, Q_A, Q_B, op="rotate") == "reference":
        return _rotation_ref.rotate_back_ref(X_hat, Q_A, Q_B)
    return torch.ops.tritonkron.rotate(X_hat, Q_A, Q_B, True)


def rotated_statistics(
    A: Tensor,
    B: Tensor,
    G: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    w_A: Tensor | None,
    s_A: Tensor,
    w_B: Tensor | None,
    s_B: Tensor,
    beta: float,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(A', B', Ĝ): A' = β A + s_A G Q_B diag(w_B) Q_Bᵀ Gᵀ, B' = β B + s_B Gᵀ Q_A diag(w_A) Q_Aᵀ G, Ĝ = Q_Aᵀ G Q_B.

    Both paths share the products G Q_B and Q_Aᵀ G between the three results
    (:func:`tritonkron.ops.rotation.reference.rotated_statistics_ref`,
    :func:`tritonkron.ops.rotated_statistics.triton.rotated_statistics_triton`). A weight None means
    w = 1 (W = I, von Neumann), for which that factor's Gram matrix reads G itself.
    """
    if resolve_backend(backend, A, G, Q_A, op="rotated_statistics") == "reference":
        return _rotation_ref.rotated_statistics_ref(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, beta)
    out = torch.ops.tritonkron.rotated_statistics(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, float(beta))
    return out[0], out[1], out[2]


def inverse_root(
    A: Tensor, p: int, *, max_iters: int = 100, tol: float | None = None, backend: str | None = None
):
    """Coupled Newton–Schulz A^{-1/p} of a batch ``[B, d, d]``; returns an ``InverseRootResult``.

    The reference is :func:`tritonkron.ops.inverse_root.methods.newton_schulz_inverse_root`; the
    result carries a per-matrix residual and a convergence status so callers can fall back to eigh.
    """
    from tritonkron.ops.inverse_root.methods import newton_schulz_inverse_root

    if resolve_backend(backend, A, op="inverse_root") == "reference":
        return newton_schulz_inverse_root(A, p, max_iters=max_iters, tol=tol)
    from tritonkron.ops.inverse_root.triton import newton_schulz_triton

    return kernel_guard.guarded(
        "inverse_root",
        lambda: newton_schulz_triton(A, p, max_iters=max_iters, tol=tol),
        lambda: newton_schulz_inverse_root(A, p, max_iters=max_iters, tol=tol),
        A,
    )


# ---------------------------------------------------------------------------------------------
# Sketched (low-rank-plus-isotropic) factors: see tritonkron.ops.sketch.reference.
# ---------------------------------------------------------------------------------------------


def sketch_update(
    U: Tensor,
    lam: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: Literal["left", "right"],
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA step X̃ ← proj(β X̃ + s·G_s W G_sᵀ) of a factor sketch; returns (U', λ', τ').

    See :func:`tritonkron.ops.sketch.reference.sketch_update_ref` for the arguments.
    """
    from tritonkron.ops.sketch import reference as _sketch_ref

    if resolve_backend(backend, U, G, op="sketch_update") == "reference":
        return _sketch_ref.sketch_update_ref(U, lam, tau, G, V, w, w_tau, scale, beta, side)
    out = torch.ops.tritonkron.sketch_update(U, lam, tau, G, V, w, w_tau, scale, float(beta), side)
    return out[0], out[1], out[2]


def sketch_precondition(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    *,
    backend: str | None = None,
) -> Tensor:
    """The damped spike-and-flat direction from top-k bases and tail constants (``[B, m, n]``).

    See :func:`tritonkron.ops.sketch.reference.sketch_precondition_ref`.
    """
    from tritonkron.ops.sketch import reference as _sketch_ref

    if resolve_backend(backend, M, U_A, U_B, op="sketch_precondition") == "reference":
        return _sketch_ref.sketch_precondition_ref(M, U_A, s_A, c_A, U_B, s_B, c_B, eps)
    return torch.ops.tritonkron.sketch_precondition(M, U_A, s_A, c_A, U_B, s_B, c_B, float(eps))


if HAS_TRITON:
    from tritonkron.ops import custom_ops  # noqa: F401  (registers the tritonkron:: custom ops)
