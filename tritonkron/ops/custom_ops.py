"""``torch.library`` registrations of the Triton launchers as ``tritonkron::<op>`` custom ops.

Each op is opaque to ``torch.compile`` (one graph node per launch, no graph break) and has a
fake implementation that only describes the output, so tracing never launches a kernel. Each
body runs under :func:`tritonkron.ops.kernel_guard.guarded`: a kernel that fails disables its op and
the reference computes the result, eagerly and inside compiled graphs alike.
Every op of the step's GEMMs takes the precision policy as its last argument, a plain string
("ieee", "tf32" or "bf16"; :mod:`tritonkron.ops.precision`). Imported once, by :mod:`tritonkron.ops` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.ops.factor_update.triton import factor_update_triton
from tritonkron.ops.kernel_guard import guarded
from tritonkron.ops.precondition.triton import eigenbasis_precondition_triton, spike_and_flat_triton
from tritonkron.ops.rotated_statistics.triton import rotated_statistics_triton
from tritonkron.ops.rotation.triton import rotate_triton
from tritonkron.ops.sketch.triton import sketch_precondition_triton, sketch_track_triton, sketch_update_triton
from tritonkron.ops.track_eigenvalues.triton import track_eigenvalues_triton


@torch.library.custom_op("tritonkron::factor_update", mutates_args=())
def factor_update_op(
    X: Tensor,
    G: Tensor,
    beta: float,
    scale: Tensor,
    side: str,
    W: Tensor | None,
    Q: Tensor | None,
    w: Tensor | None,
    precision: str,
) -> Tensor:
    """Custom op around :func:`factor_update_triton` (weight: dense W, or (Q, w), or none)."""
    from tritonkron.ops.factor_update.reference import factor_update_ref

    weight = W if W is not None else ((Q, w) if Q is not None else None)
    return guarded(
        "factor_update",
        lambda: factor_update_triton(X, G, beta, scale, side, weight, precision=precision),
        lambda: factor_update_ref(X, G, beta, scale, side, weight, precision),
        X, G,
    )  # fmt: skip


@factor_update_op.register_fake
def _(X, G, beta, scale, side, W, Q, w, precision):  # noqa: ANN001, ANN202 - signature mirrors the op
    return torch.empty_like(X)


@torch.library.custom_op("tritonkron::precondition", mutates_args=())
def precondition_op(
    M: Tensor, Q_A: Tensor, Q_B: Tensor, s_A: Tensor, s_B: Tensor, eps: float, precision: str
) -> Tensor:
    """Custom op around :func:`eigenbasis_precondition_triton`."""
    from tritonkron.ops.precondition.reference import eigenbasis_precondition_ref

    return guarded(
        "precondition",
        lambda: eigenbasis_precondition_triton(M, Q_A, Q_B, s_A, s_B, eps, precision=precision),
        lambda: eigenbasis_precondition_ref(M, Q_A, Q_B, s_A, s_B, eps, precision),
        M, Q_A, Q_B,
    )  # fmt: skip


@precondition_op.register_fake
def _(M, Q_A, Q_B, s_A, s_B, eps, precision):  # noqa: ANN001, ANN202
    return torch.empty_like(M)


@torch.library.custom_op("tritonkron::spike_and_flat", mutates_args=())
def spike_and_flat_op(U_k: Tensor, top_scales: Tensor, c: Tensor, Y: Tensor, precision: str) -> Tensor:
    """Custom op around :func:`spike_and_flat_triton`."""
    from tritonkron.ops.precondition.reference import spike_and_flat_apply

    return guarded(
        "spike_and_flat",
        lambda: spike_and_flat_triton(U_k, top_scales, c, Y, precision=precision),
        lambda: spike_and_flat_apply(U_k, top_scales, c, Y, precision),
        U_k, Y,
    )  # fmt: skip


@spike_and_flat_op.register_fake
def _(U_k, top_scales, c, Y, precision):  # noqa: ANN001, ANN202
    return torch.empty_like(Y)


@torch.library.custom_op("tritonkron::track_eigenvalues", mutates_args=())
def track_eigenvalues_op(
    a: Tensor,
    b: Tensor,
    G_hat: Tensor,
    left_weight: Tensor | None,
    left_scale: Tensor,
    right_weight: Tensor | None,
    right_scale: Tensor,
    beta: float,
) -> list[Tensor]:
    """Custom op around :func:`track_eigenvalues_triton`; returns [a_new, b_new]."""
    from tritonkron.math.divergences import Coupling
    from tritonkron.ops.track_eigenvalues.reference import track_eigenvalues_ref

    coupling = Coupling(left_weight, left_scale, right_weight, right_scale)
    return list(
        guarded(
            "track_eigenvalues",
            lambda: track_eigenvalues_triton(a, b, G_hat, left_weight, left_scale, right_weight, right_scale, beta),
            lambda: track_eigenvalues_ref(a, b, G_hat, coupling, beta),
            a, G_hat,
        )
    )  # fmt: skip


@track_eigenvalues_op.register_fake
def _(a, b, G_hat, left_weight, left_scale, right_weight, right_scale, beta):  # noqa: ANN001, ANN202
    return [torch.empty_like(a), torch.empty_like(b)]


@torch.library.custom_op("tritonkron::rotate", mutates_args=())
def rotate_op(X: Tensor, Q_A: Tensor, Q_B: Tensor, back: bool, precision: str) -> Tensor:
    """Custom op around :func:`rotate_triton`: Q_Aᵀ X Q_B, or Q_A X Q_Bᵀ with ``back``."""
    from tritonkron.ops.rotation.reference import rotate_back_ref, rotate_ref

    return guarded(
        "rotate",
        lambda: rotate_triton(X, Q_A, Q_B, back=back, precision=precision),
        lambda: (rotate_back_ref if back else rotate_ref)(X, Q_A, Q_B, precision),
        X, Q_A, Q_B,
    )  # fmt: skip


@rotate_op.register_fake
def _(X, Q_A, Q_B, back, precision):  # noqa: ANN001, ANN202
    return torch.empty_like(X)


@torch.library.custom_op("tritonkron::rotated_statistics", mutates_args=())
def rotated_statistics_op(
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
    precision: str,
) -> list[Tensor]:
    """Custom op around :func:`rotated_statistics_triton`; returns [A', B', Ĝ]."""
    from tritonkron.ops.rotated_statistics.reference import rotated_statistics_ref

    return list(
        guarded(
            "rotated_statistics",
            lambda: rotated_statistics_triton(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, beta, precision=precision),
            lambda: rotated_statistics_ref(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, beta, precision),
            A, G, Q_A,
        )
    )  # fmt: skip


@rotated_statistics_op.register_fake
def _(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, beta, precision):  # noqa: ANN001, ANN202
    return [torch.empty_like(A), torch.empty_like(B), torch.empty_like(G)]


# Sketched factors.


@torch.library.custom_op("tritonkron::sketch_update", mutates_args=())
def sketch_update_op(
    U: Tensor,
    lam: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: str,
    precision: str,
) -> list[Tensor]:
    """Custom op around :func:`sketch_update_triton`; returns [U', λ', τ']."""
    from tritonkron.ops.sketch.reference import sketch_update_ref

    return list(
        guarded(
            "sketch_update",
            lambda: sketch_update_triton(U, lam, tau, G, V, w, w_tau, scale, beta, side, precision=precision),
            lambda: sketch_update_ref(U, lam, tau, G, V, w, w_tau, scale, beta, side, precision),
            U, G,
        )
    )  # fmt: skip


@sketch_update_op.register_fake
def _(U, lam, tau, G, V, w, w_tau, scale, beta, side, precision):  # noqa: ANN001, ANN202
    return [torch.empty_like(U), U.new_empty(U.shape[0], U.shape[-1]), torch.empty_like(tau)]


@torch.library.custom_op("tritonkron::sketch_track", mutates_args=())
def sketch_track_op(
    U: Tensor,
    H: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: str,
    precision: str,
) -> list[Tensor]:
    """Custom op around :func:`sketch_track_triton`; returns [H', τ']."""
    from tritonkron.ops.sketch.reference import sketch_track_ref

    return list(
        guarded(
            "sketch_track",
            lambda: sketch_track_triton(U, H, tau, G, V, w, w_tau, scale, beta, side, precision=precision),
            lambda: sketch_track_ref(U, H, tau, G, V, w, w_tau, scale, beta, side, precision),
            U, G,
        )
    )  # fmt: skip


@sketch_track_op.register_fake
def _(U, H, tau, G, V, w, w_tau, scale, beta, side, precision):  # noqa: ANN001, ANN202
    return [torch.empty_like(H), torch.empty_like(tau)]


@torch.library.custom_op("tritonkron::sketch_precondition", mutates_args=())
def sketch_precondition_op(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    precision: str,
) -> Tensor:
    """Custom op around :func:`sketch_precondition_triton`."""
    from tritonkron.ops.sketch.reference import sketch_precondition_ref

    return guarded(
        "sketch_precondition",
        lambda: sketch_precondition_triton(M, U_A, s_A, c_A, U_B, s_B, c_B, eps, precision=precision),
        lambda: sketch_precondition_ref(M, U_A, s_A, c_A, U_B, s_B, c_B, eps, precision),
        M, U_A, U_B,
    )  # fmt: skip


@sketch_precondition_op.register_fake
def _(M, U_A, s_A, c_A, U_B, s_B, c_B, eps, precision):  # noqa: ANN001, ANN202
    return torch.empty_like(M)
