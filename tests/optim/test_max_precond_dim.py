"""``max_precond_dim``: diagonal factors for large dims (docs/maths.md §9.4, tritonkron/step/diagonal.py)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tritonkron as tk
from tritonkron.math.blocking import layout_of
from tritonkron.step.bounds import adam_bound
from tritonkron.tuning.entry import TuningEntry
from tritonkron.tuning.file import TuningTable, device_name

DIVERGENCES = ("logdet", "von_neumann", "frobenius")


# ---------------------------------------------------------------- the diagonal fixed point


def _partial_trace(C4: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Tr_B[C (I ⊗ W)] = E[G W Gᵀ] (docs/maths.md §2.6)."""
    return torch.einsum("ijkl,lj->ik", C4, W)


def _diagonal_optimum(C4: torch.Tensor, B: torch.Tensor, divergence: str) -> torch.Tensor:
    """The claimed minimiser a of D(C, diag(a) ⊗ B) over a > 0, B fixed (§9.4)."""
    n = B.shape[0]
    if divergence == "frobenius":
        return torch.diagonal(_partial_trace(C4, B)) / (B * B).sum()
    if divergence == "logdet":
        return torch.diagonal(_partial_trace(C4, torch.linalg.inv(B))) / n
    return torch.diagonal(_partial_trace(C4, torch.eye(n, dtype=B.dtype))) / torch.trace(B)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_diagonal_factor_minimises_the_divergence_among_diagonal_factors(divergence: str) -> None:
    """With B fixed, a_i = diag of the unconstrained fixed point is stationary along every
    coordinate and no perturbation of it lowers D(C, diag(a) ⊗ B)."""
    g = torch.Generator().manual_seed(3)
    m, n = 4, 3
    X = torch.randn(m * n, 3 * m * n, generator=g, dtype=torch.float64)
    C = X @ X.T / X.shape[1] + 0.1 * torch.eye(m * n, dtype=torch.float64)
    Y = torch.randn(n, n, generator=g, dtype=torch.float64)
    B = Y @ Y.T + n * torch.eye(n, dtype=torch.float64)
    a = _diagonal_optimum(C.reshape(m, n, m, n), B, divergence)
    assert bool((a > 0).all())

    def value(x: torch.Tensor) -> float:
        return float(tk.bregman_divergence(C, torch.kron(torch.diag(x), B), divergence))

    best = value(a)
    h = 1e-5 * float(a.mean())
    for i in range(m):
        e = torch.zeros(m, dtype=torch.float64)
        e[i] = h
        slope = (value(a + e) - value(a - e)) / (2 * h)
        assert abs(slope) <= 1e-6 * (abs(best) / float(a.mean()) + 1.0)
    for _ in range(20):
        delta = 0.05 * a * torch.randn(m, generator=g, dtype=torch.float64)
        assert value(a + delta) >= best
    # the unconstrained optimum differs from diag(a) off the diagonal: the restriction is real
    full = _partial_trace(C.reshape(m, n, m, n), torch.eye(n, dtype=torch.float64))
    assert float((full - torch.diag(torch.diagonal(full))).abs().max()) > 1e-3


# ---------------------------------------------------------------- the step against a reference


def _floor(x: torch.Tensor, rel: float = 1e-8) -> torch.Tensor:
    return torch.maximum(x, x.max() * rel)


def _weights(divergence: str, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(w, s) of the increment that x's side gives the other side (docs/maths.md §2.3)."""
    if divergence == "logdet":
        return 1 / x, 1.0
    if divergence == "von_neumann":
        return torch.ones_like(x), 1.0
    return x, 1 / float((x * x).sum())


class _Reference:
    """The equations of §9.4 in float64 for a block whose rows (m > max_precond_dim) are diagonal:
    the column factor B dense with basis Q, a = the diagonal row factor."""

    def __init__(self, divergence: str, period: int, betas: tuple[float, float] = (0.9, 0.95)) -> None:
        self.div, self.T, (self.b1, self.b2) = divergence, period, betas
        self.ready, self.clock = False, 0

    def _init(self, G: torch.Tensor) -> None:
        s = float((G * G).sum())
        l = (G * G).sum(1)
        r, Q = torch.linalg.eigh(G.T @ G)
        r, Q = r.flip(0), Q.flip(1)
        if self.div != "von_neumann":
            l, r = l / math.sqrt(s), r / math.sqrt(s)
        self.a = torch.maximum(l, 0.1 * l.mean())
        self.b = torch.maximum(r, 0.1 * r.mean())
        self.Q, self.B, self.tau = Q, Q @ torch.diag(self.b) @ Q.T, s
        self.M = (1 - self.b1) * G @ Q
        self.ready = True

    def step(self, G: torch.Tensor) -> torch.Tensor:
        self.clock += 1
        if not self.ready:
            self._init(G)
            return torch.zeros_like(G)
        m, n = G.shape
        fa, fb = _floor(self.a), _floor(self.b)
        w_b, s_a = _weights(self.div, fb)
        w_a, s_b = _weights(self.div, fa)
        if self.div == "logdet":
            s_a, s_b = 1 / n, 1 / m
        Gh = G @ self.Q
        self.M = self.b1 * self.M + (1 - self.b1) * Gh
        pa, pb = fa, fb
        if self.div == "von_neumann":
            pa, pb = _floor(self.a / math.sqrt(self.tau)), _floor(self.b / math.sqrt(self.tau))
        sigma = torch.outer(pa.rsqrt(), pb.rsqrt())
        sigma = sigma / (1 + 1e-8 * sigma)
        U = (self.M * sigma) @ self.Q.T
        w = 1 - self.b2
        self.a = self.b2 * self.a + w * s_a * (Gh * Gh * w_b).sum(1)
        self.b = self.b2 * self.b + w * s_b * (Gh * Gh * w_a[:, None]).sum(0)
        self.B = self.b2 * self.B + w * s_b * G.T @ (G * w_a[:, None])
        self.tau = self.b2 * self.tau + w * float((G * G).sum())
        if self.clock % self.T == 0:
            Q_new, _ = torch.linalg.qr(self.B @ self.Q)
            b_new = torch.diagonal(Q_new.T @ self.B @ Q_new)
            order = torch.argsort(b_new, descending=True)
            Q_new, self.b = Q_new[:, order], b_new[order]
            self.M = self.M @ self.Q.T @ Q_new
            self.Q = Q_new
        return U


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_one_sided_step_matches_float64_reference(divergence: str, transpose: bool) -> None:
    """Initialisation, statistics, direction and two refreshes (T = 3) of a 24 × 8 block whose
    24-side is diagonal (``max_precond_dim=16``), and of its 8 × 24 mirror."""
    g = torch.Generator().manual_seed(11)
    m, n, lr, T = 24, 8, 1e-3, 3
    W0 = torch.randn(m, n, generator=g, dtype=torch.float64)
    W = torch.nn.Parameter(W0.T.clone() if transpose else W0.clone())
    opt = tk.Kron([W], lr=lr, divergence=divergence, precondition_every=T, max_precond_dim=16, bound=None)
    ref = _Reference(divergence, T)  # the unbounded direction (the bound: next tests)
    for _ in range(8):
        G = torch.randn(m, n, generator=g, dtype=torch.float64)
        W.grad = G.T.clone() if transpose else G.clone()
        before = W.detach().clone()
        opt.step()
        U = (before - W.detach()) / lr
        U_ref = ref.step(G)
        got = U.T if transpose else U
        torch.testing.assert_close(got, U_ref, rtol=1e-7, atol=1e-9 * (1 + float(U_ref.abs().max())))
    assert float(U_ref.abs().max()) > 0


# ---------------------------------------------------------------- state, memory, stacking, bound


def test_layout_and_state_shapes() -> None:
    """A dim above max_precond_dim is one part with a diagonal factor; the other is blocked."""
    layout = layout_of((5000, 2000), 1024, 4096)
    assert layout.diagonal == (True, False)
    assert [g.shape for g in layout.groups] == [(5000, 1000)] and len(layout.groups[0].offsets) == 2
    assert layout_of((5000, 2000), 1024, None).diagonal == (False, False)
    assert layout_of((5000, 2000), 1024, 4096) is layout


class _LargestOutput(TorchDispatchMode):
    """Records the largest numel of any op's tensor output."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_diagonal_side_never_forms_a_d_by_d_tensor() -> None:
    m, n = 600, 4
    W = torch.nn.Parameter(torch.randn(m, n))
    opt = tk.Kron([W], lr=1e-3, precondition_every=2, max_precond_dim=64)
    spy = _LargestOutput()
    with spy:
        for _ in range(4):
            W.grad = torch.randn(m, n)
            opt.step()
    assert spy.largest < m * m // 10
    block = opt.state[W]["blocks"][0]
    assert tuple(block["diag_a"].shape) == (1, m) and "factor_a" not in block and "basis_a" not in block
    assert max(t.numel() for t in block.values()) == m * n


def _model(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(96, 16), (96, 16), (16, 80), (80, 96), (96, 16), (32, 32)]
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """One-sided, mirrored and two-sided groups, and a dense group with the same 96 × 16 shape."""
    return [{"params": params[:4], "max_precond_dim": 64}, {"params": params[4:]}]


def _run(opt: tk.Kron, params: list[torch.nn.Parameter], steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    params, copies = _model(0), _model(0)
    opt = tk.Kron(_groups(params), lr=1e-2, precondition_every=3)
    _run(opt, params, 5, seed=1)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    for p, q in zip(params, copies, strict=True):
        q.data.copy_(p.data)
    resumed = tk.Kron(_groups(copies), lr=1e-2, precondition_every=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _run(opt, params, 5, seed=2)
    _run(resumed, copies, 5, seed=2)
    for p, q in zip(params, copies, strict=True):
        assert torch.equal(p, q)


def test_loading_state_of_another_max_precond_dim_raises() -> None:
    params = _model(0)[:1]
    opt = tk.Kron(params, lr=1e-2, max_precond_dim=64)
    _run(opt, params, 1, seed=1)
    dense = tk.Kron(params, lr=1e-2)
    dense.load_state_dict(opt.state_dict())  # the saved group options come back with it
    dense.param_groups[0]["max_precond_dim"] = None
    with pytest.raises(ValueError, match="max_precond_dim"):
        _run(dense, params, 1, seed=2)


def test_stacked_equals_unstacked_bitwise() -> None:
    results = []
    for stack in (True, False):
        params = _model(4)
        opt = tk.Kron(_groups(params), lr=1e-2, precondition_every=3, stack=stack)
        _run(opt, params, 7, seed=5)
        results.append(params)
    for p, q in zip(*results, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("rank", [None, 4])
def test_bound_adam_caps_the_rms_of_a_one_sided_direction(rank: int | None) -> None:
    """RMS(U) ≤ B even when a gradient lands far outside the tracked statistics (rank applies to
    the dense side only)."""
    g = torch.Generator().manual_seed(7)
    W = torch.nn.Parameter(torch.zeros(96, 16))
    lr, cap = 1.0, adam_bound(0.9, 0.95)
    opt = tk.Kron([W], lr=lr, bound="adam", rank=rank, max_precond_dim=64, precondition_every=4)
    worst = 0.0
    for t in range(12):
        G = torch.randn(96, 16, generator=g) * (1e-3 if t < 6 else 1.0)
        if t >= 6:
            G[:, 0] *= 1e4
        W.grad = G
        before = W.detach().clone()
        opt.step()
        U = (before - W.detach()) / lr
        worst = max(worst, float(U.square().mean().sqrt()))
    assert 0.1 < worst <= cap * (1 + 1e-5)


@pytest.mark.parametrize("value", [0, -3, 1.5, "big", True])
def test_bad_values_raise(value: object) -> None:
    with pytest.raises(ValueError, match="max_precond_dim"):
        tk.Kron([torch.nn.Parameter(torch.zeros(4, 4))], max_precond_dim=value)
    opt = tk.Kron([torch.nn.Parameter(torch.zeros(4, 4))])
    with pytest.raises(ValueError, match="max_precond_dim"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(4, 4))], "max_precond_dim": value})


def test_sketched_groups_ignore_max_precond_dim() -> None:
    W = torch.nn.Parameter(torch.randn(96, 16))
    opt = tk.Kron([W], lr=1e-3, rank=4, sketch=True, max_precond_dim=64)
    _run(opt, [W], 2, seed=0)
    assert "diag_a" not in opt.state[W]["blocks"][0]


def test_rank_auto_applies_its_ranks_to_the_dense_side(tmp_path: Path) -> None:
    """``rank="auto"`` with a diagonal side: the same steps as the explicit rank it reads."""
    entry = TuningEntry(shape=(96, 16), dtype="float32", block_size=1024, rank_a=4, rank_b=4)
    path = TuningTable(device=device_name(torch.device("cpu")), entries=[entry]).save(tmp_path / "t.json")
    results = []
    for rank, tuning in (("auto", path), (4, None)):
        W = torch.nn.Parameter(torch.randn(96, 16, generator=torch.Generator().manual_seed(0)))
        opt = tk.Kron([W], lr=1e-2, rank=rank, tuning=tuning, max_precond_dim=64, precondition_every=3)
        _run(opt, [W], 6, seed=3)
        assert "diag_a" in opt.state[W]["blocks"][0]
        results.append(W.detach())
    assert torch.equal(*results)


def test_default_and_checkpoints_that_predate_the_option() -> None:
    """The default 16384 makes a 20000-dim side diagonal; a state dict saved before the option
    existed (its groups without the key) keeps the blocked layout it was written with."""
    assert tk.Kron([torch.nn.Parameter(torch.zeros(2, 2))]).defaults["max_precond_dim"] == 16384
    W = torch.nn.Parameter(torch.randn(20000, 4, generator=torch.Generator().manual_seed(0)))
    _run(tk.Kron([W], lr=1e-3, block_size=64), [W], 1, seed=0)
    old = tk.Kron([W], lr=1e-3, block_size=64, max_precond_dim=None)
    _run(old, [W], 2, seed=1)
    saved = old.state_dict()
    for group in saved["param_groups"]:
        del group["max_precond_dim"]
    resumed = tk.Kron([W], lr=1e-3, block_size=64)
    resumed.load_state_dict(saved)
    _run(resumed, [W], 1, seed=2)
    blocks = resumed.state[W]["blocks"]
    assert "diag_a" not in blocks[0] and sum(b["basis_a"].shape[0] for b in blocks) == 313
