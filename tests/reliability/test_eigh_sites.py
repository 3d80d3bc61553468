"""Every factorisation of ``Kron.step`` survives a failing ``torch.linalg.eigh``/``svd``.

Each call site of :func:`tritonkron.math.safe_linalg.safe_eigh` (and ``safe_svd``) is made to
fail in turn by patching the LAPACK call to raise ``torch.linalg.LinAlgError`` whenever it is
reached from one function of the step (every attempt of the fallback ladder then fails). Training
must go on with finite parameters and state, and the failure must be reported: a
:class:`LinalgFallbackWarning` naming the site, and, where the block is left waiting, its
``refresh_failures`` count. The ladder itself is tested on NaN input (identity fallback) and on a
first attempt that fails where the float64 retry succeeds (eigenpairs against float64).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

import tritonkron as tk
from tests import _matrices as mats
from tests.reliability._frames import called_from
from tritonkron.math.basis import canonical_degenerate_basis
from tritonkron.math.projection import bregman_divergence
from tritonkron.math.safe_linalg import (
    SITE_CANONICAL,
    SITE_INIT,
    SITE_SKETCH,
    SITE_SKETCH_INIT,
    LinalgFallbackWarning,
    safe_eigh,
    safe_svd,
)
from tritonkron.ops.sketch.reference import rayleigh_ritz

F32, F64 = torch.float32, torch.float64
_REAL_EIGH = torch.linalg.eigh
_REAL_SVD = torch.linalg.svd
STEPS = 4


def _fail(
    monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[[torch.Tensor], bool]
) -> list[torch.dtype]:
    """Patch ``torch.linalg.<name>`` to raise LinAlgError where ``when(input)``; returns the dtypes
    of the failed calls."""
    real = {"eigh": _REAL_EIGH, "svd": _REAL_SVD}[name]
    failed: list[torch.dtype] = []

    def patched(A: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if when(A):
            failed.append(A.dtype)
            raise torch.linalg.LinAlgError(f"linalg.{name}: The algorithm failed to converge (forced)")
        return real(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, name, patched)
    return failed


def _site_warnings(record: list[warnings.WarningMessage], site: str) -> list[str]:
    return [
        str(w.message)
        for w in record
        if issubclass(w.category, LinalgFallbackWarning) and site in str(w.message)
    ]


def _setup(shapes: list[tuple[int, int]], **options: object) -> tuple[list[torch.Tensor], tk.Kron]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(*shape, generator=gen).requires_grad_() for shape in shapes]
    return params, tk.Kron(params, lr=0.02, precondition_every=1, **options)


def _step(
    params: list[torch.Tensor], opt: tk.Kron, gen: torch.Generator, scales: tuple[float, ...] = ()
) -> None:
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=gen) * (scales[i] if i < len(scales) else 1.0)
    opt.step()


def _assert_finite(params: list[torch.Tensor], opt: tk.Kron) -> None:
    for p in params:
        assert bool(torch.isfinite(p).all())
        for blocks in opt.state[p]["blocks"]:
            for key, value in blocks.items():
                assert bool(torch.isfinite(value.float()).all()), key


# ----------------------------------------------------------------------------- the ladder


def test_a_nan_matrix_gets_the_identity_fallback_and_the_others_are_exact() -> None:
    good = [mats.planted(5, 1e2, dtype=F32, seed=s).matrix for s in (0, 1)]
    bad = good[0].clone()
    bad[1, 3] = bad[3, 1] = float("nan")
    X = torch.stack([good[0], bad, good[1]])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        values, vectors, ok = safe_eigh(X, site="test")
        safe_eigh(X, site="test")  # the second failure at the same site does not warn again
    assert ok.tolist() == [True, False, True]
    assert len(_site_warnings(record, "test")) == 1
    for i in (0, 2):  # the members that did not fail: exactly torch.linalg.eigh
        expected = _REAL_EIGH(X[i])
        assert torch.equal(values[i], expected.eigenvalues) and torch.equal(vectors[i], expected.eigenvectors)
    # the failed member: V = I with its columns ordered like λ = diag(X), ascending
    diag, order = torch.sort(bad.diagonal(), stable=True)
    assert torch.equal(values[1], diag)
    assert torch.equal(vectors[1], torch.eye(5)[:, order])


@pytest.mark.parametrize("descending", [False, True])
def test_an_all_nan_batch_never_raises(descending: bool) -> None:
    X = torch.full((2, 4, 4), float("nan"), dtype=F64)
    with pytest.warns(LinalgFallbackWarning, match="test"):
        values, vectors, ok = safe_eigh(X, site="test", descending=descending)
    assert not bool(ok.any()) and values.shape == (2, 4)
    assert torch.equal(vectors.abs().sum(-1), torch.ones(2, 4, dtype=F64))  # a permutation matrix


def test_float64_retry_gives_the_eigenpairs_of_the_float64_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tolerance: the float64 eigenpairs are rounded once to float32 (2⁻²⁴ ≈ 6e-8 relative), so
    eigenvalues and the reconstruction V diag(λ) Vᵀ agree with the float64 reference to 1e-6."""
    X = torch.stack([mats.planted(12, 1e2, dtype=F32, seed=s).matrix for s in (0, 1)])
    failed = _fail(monkeypatch, "eigh", lambda A: A.dtype == F32)
    values, vectors, ok = safe_eigh(X, site="test")
    assert failed == [F32] and bool(ok.all())
    assert values.dtype == F32 and vectors.dtype == F32
    reference = _REAL_EIGH(X.double())
    rel = (values.double() - reference.eigenvalues).abs().max() / reference.eigenvalues.abs().max()
    assert float(rel) <= 1e-6
    rebuilt = (vectors.double() * values.double().unsqueeze(-2)) @ vectors.double().transpose(-1, -2)
    assert float(torch.linalg.norm(rebuilt - X.double()) / torch.linalg.norm(X.double())) <= 1e-6
    overlap = (
        reference.eigenvectors.transpose(-1, -2) @ vectors.double()
    ).abs()  # distinct λ: ± the same vectors
    torch.testing.assert_close(overlap, torch.eye(12, dtype=F64).expand(2, -1, -1), rtol=0, atol=1e-6)


def test_damped_retry_returns_the_eigenvalues_of_the_matrix_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    K = mats.planted(8, 1e2, scale=3.0, dtype=F64, seed=2)
    # succeeds only once the damping rungs have added ≥ 1e-6·(tr X/d) to the diagonal
    _fail(monkeypatch, "eigh", lambda A: float((A - K.matrix).diagonal(dim1=-2, dim2=-1).min()) < 1e-7)
    values, vectors, ok = safe_eigh(K.matrix, site="test", descending=True)
    assert bool(ok)
    torch.testing.assert_close(values, K.eigenvalues.flip(0), rtol=1e-12, atol=0.0)


def test_one_failing_member_does_not_take_the_batch_down(monkeypatch: pytest.MonkeyPatch) -> None:
    X = torch.stack([mats.planted(6, 10.0, dtype=F64, seed=s).matrix for s in range(3)])
    marker = float(X[1, 0, 5])
    _fail(monkeypatch, "eigh", lambda A: bool((A[..., 0, 5] == marker).any()))  # member 1, every rung
    with pytest.warns(LinalgFallbackWarning):
        values, vectors, ok = safe_eigh(X, site="test")
    assert ok.tolist() == [True, False, True]
    for i in (0, 2):
        expected = _REAL_EIGH(X[i])
        assert torch.equal(values[i], expected.eigenvalues) and torch.equal(vectors[i], expected.eigenvectors)


def test_svd_retries_in_float64_and_falls_back_to_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    G = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(3))
    _fail(monkeypatch, "svd", lambda A: A.dtype == F32)
    U, S, Vh, ok = safe_svd(G, site="test")
    assert bool(ok.all()) and S.dtype == F32
    torch.testing.assert_close(S.double(), _REAL_SVD(G.double(), full_matrices=False).S, rtol=1e-6, atol=0.0)
    monkeypatch.undo()
    _fail(monkeypatch, "svd", lambda A: True)
    with pytest.warns(LinalgFallbackWarning, match="test"):
        U, S, Vh, ok = safe_svd(G, site="test")
    assert not bool(ok.any()) and bool((S == 0).all())
    assert torch.equal(U, torch.eye(7, 4).expand(2, -1, -1)) and torch.equal(
        Vh, torch.eye(4).expand(2, -1, -1)
    )


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("fail", [False, True])
def test_every_path_and_the_compiled_op_give_one_layout(
    monkeypatch: pytest.MonkeyPatch, descending: bool, fail: bool
) -> None:
    """The layout of V decides how the products that use it round: success (LAPACK's column-major
    eigenvectors; row-major once sorted), fallback and the custom op's fake must all agree."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tritonkron.math.safe_linalg import _safe_eigh_op

    X = torch.stack([mats.planted(5, 10.0, seed=s).matrix for s in range(3)])
    expected = _REAL_EIGH(X).eigenvectors
    if descending:
        expected = expected.contiguous()
    if fail:
        _fail(monkeypatch, "eigh", lambda A: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinalgFallbackWarning)
        eager = safe_eigh(X, site="test", descending=descending).vectors
        op = _safe_eigh_op(X, descending, "test")[1]
    with FakeTensorMode() as mode:
        fake = _safe_eigh_op(mode.from_tensor(X), descending, "test")[1]
    assert eager.stride() == op.stride() == fake.stride() == expected.stride()


def test_compiled_step_equals_the_eager_step_bit_for_bit() -> None:
    """``torch.compile`` (aot_eager) runs the factorisations as custom ops; the step must not change."""

    def train(compiled: bool) -> list[torch.Tensor]:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 10), torch.nn.Tanh(), torch.nn.Linear(10, 6))
        opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        gen = torch.Generator().manual_seed(7)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            step()
        torch._dynamo.reset()
        return [p.detach().clone() for p in model.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's notes about profiler hooks
        for eager, compiled in zip(train(False), train(True), strict=True):
            assert torch.equal(eager, compiled)


# ----------------------------------------------------------------------------- the call sites


def test_dense_initialisation_failure_leaves_the_block_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    params, opt = _setup([(6, 4)])
    gen = torch.Generator().manual_seed(1)
    before = params[0].detach().clone()
    _fail(monkeypatch, "eigh", lambda A: called_from("initial_values"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(STEPS):
            _step(params, opt, gen)
    blocks = opt.state[params[0]]["blocks"][0]
    assert _site_warnings(record, SITE_INIT)
    assert not bool(blocks["ready"].any()) and int(blocks["refresh_failures"].max()) == STEPS
    assert torch.equal(params[0], before)  # a block that is not initialised takes no step
    _assert_finite(params, opt)
    monkeypatch.undo()
    _step(params, opt, gen)  # the next gradient initialises it and resets the count
    _step(params, opt, gen)
    blocks = opt.state[params[0]]["blocks"][0]
    assert bool(blocks["ready"].all()) and int(blocks["refresh_failures"].max()) == 0
    assert not torch.equal(params[0], before)


def test_dense_initialisation_recovers_from_a_failed_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    params, opt = _setup([(6, 4)])
    gen = torch.Generator().manual_seed(1)
    failed = _fail(monkeypatch, "eigh", lambda A: A.dtype == F32 and called_from("initial_values"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinalgFallbackWarning)  # a recovered ladder does not warn
        for _ in range(STEPS):
            _step(params, opt, gen)
    blocks = opt.state[params[0]]["blocks"][0]
    assert failed == [F32] * 4 and bool(blocks["ready"].all())  # G Gᵀ, Gᵀ G and both canonicalisations
    assert int(blocks["refresh_failures"].max()) == 0
    _assert_finite(params, opt)


def test_stacked_blocks_initialise_around_a_failing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stacked 8 × 8 parameters; the Gram matrices of the second (gradient × 1e3) always fail."""
    params, opt = _setup([(8, 8), (8, 8)])
    gen = torch.Generator().manual_seed(1)
    _fail(
        monkeypatch,
        "eigh",
        lambda A: called_from("initial_values") and bool((A.abs().amax((-2, -1)) > 1e3).any()),
    )
    with pytest.warns(LinalgFallbackWarning, match="initialisation"):
        for _ in range(STEPS):
            _step(params, opt, gen, scales=(1.0, 1e3))
    first, second = (opt.state[p]["blocks"][0] for p in params)
    assert bool(first["ready"].all()) and int(first["refresh_failures"].max()) == 0
    assert not bool(second["ready"].any()) and int(second["refresh_failures"].max()) == STEPS
    _assert_finite(params, opt)


@pytest.mark.parametrize("rank", [None, 1])
def test_canonicalisation_failure_keeps_eighs_basis(
    monkeypatch: pytest.MonkeyPatch, rank: int | None
) -> None:
    params, opt = _setup([(6, 4), (5, 5)], rank=rank)
    gen = torch.Generator().manual_seed(1)
    before = [p.detach().clone() for p in params]
    _fail(monkeypatch, "eigh", lambda A: called_from("canonical_degenerate_basis"))
    with pytest.warns(LinalgFallbackWarning, match=SITE_CANONICAL):
        for _ in range(STEPS):
            _step(params, opt, gen)
    for p, old in zip(params, before, strict=True):
        blocks = opt.state[p]["blocks"][0]
        assert bool(blocks["ready"].all()) and int(blocks["refresh_failures"].max()) == 0
        eye = torch.eye(blocks["basis_a"].shape[-1])
        torch.testing.assert_close(
            blocks["basis_a"].transpose(-1, -2) @ blocks["basis_a"], eye.expand_as(blocks["basis_a"])
        )
        assert not torch.equal(p, old)
    _assert_finite(params, opt)


def test_canonicalisation_fallback_permutes_only_the_degenerate_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Q = torch.linalg.qr(torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(4), dtype=F64)).Q
    mask = torch.tensor([False, False, True, True, True, True]).expand(2, 6)
    _fail(monkeypatch, "eigh", lambda A: True)
    with pytest.warns(LinalgFallbackWarning, match=SITE_CANONICAL):
        W = Q.transpose(-1, -2) @ canonical_degenerate_basis(Q, mask)
    torch.testing.assert_close(W[:, :2, :2], torch.eye(2, dtype=F64).expand(2, -1, -1))
    assert torch.equal(W.round().abs().sum(-1), torch.ones(2, 6, dtype=F64))  # a permutation
    torch.testing.assert_close(W, W.round(), rtol=0, atol=1e-12)


def test_sketch_update_failure_keeps_training_with_the_candidate_directions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params, opt = _setup([(12, 9), (10, 8)], rank=2, sketch=True)
    gen = torch.Generator().manual_seed(1)
    _step(params, opt, gen)  # initialise
    before = [p.detach().clone() for p in params]
    _fail(monkeypatch, "eigh", lambda A: called_from("rayleigh_ritz"))
    with pytest.warns(LinalgFallbackWarning, match=SITE_SKETCH):
        for _ in range(STEPS):
            _step(params, opt, gen)
    for p, old in zip(params, before, strict=True):
        blocks = opt.state[p]["blocks"][0]
        assert bool(blocks["ready"].all()) and not torch.equal(p, old)
        for key in ("basis_a", "basis_b"):
            U = blocks[key]
            torch.testing.assert_close(
                U.transpose(-1, -2) @ U, torch.eye(U.shape[-1]).expand(U.shape[0], -1, -1)
            )
    _assert_finite(params, opt)


def test_sketch_fallback_conserves_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Rayleigh–Ritz step with its eigh failing: tr X̃' = β tr X̃ + tr K still holds (the
    Triton launcher runs this same function for its small dense part)."""
    gen = torch.Generator().manual_seed(5)
    batch, d, ell, beta = 2, 9, 3, 0.9
    Q = torch.linalg.qr(torch.randn(batch, d, 2 * ell, generator=gen, dtype=F64)).Q
    U = Q[..., :ell]
    lam = torch.tensor([[3.0, 2.0, 1.5], [5.0, 1.0, 0.7]], dtype=F64)
    tau = torch.tensor([0.2, 0.1], dtype=F64)
    R = torch.randn(batch, 2 * ell, 2 * ell, generator=gen, dtype=F64)
    H_K = R @ R.transpose(-1, -2)
    tr_K = torch.diagonal(H_K, dim1=-2, dim2=-1).sum(-1) + 0.5  # mass outside span(Q)
    _fail(monkeypatch, "eigh", lambda A: True)
    with pytest.warns(LinalgFallbackWarning, match=SITE_SKETCH):
        U2, lam2, tau2 = rayleigh_ritz(U, lam, tau, Q, H_K, tr_K, beta)
    torch.testing.assert_close(U2.transpose(-1, -2) @ U2, torch.eye(ell, dtype=F64).expand(batch, -1, -1))
    before = beta * (lam.sum(-1) + (d - ell) * tau) + tr_K
    torch.testing.assert_close(lam2.sum(-1) + (d - ell) * tau2, before, rtol=1e-12, atol=0.0)
    assert bool((lam2[:, :-1] >= lam2[:, 1:]).all())  # descending Rayleigh quotients


def test_sketch_initialisation_failure_leaves_the_block_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    params, opt = _setup([(12, 9)], rank=2, sketch=True)
    gen = torch.Generator().manual_seed(1)
    before = params[0].detach().clone()
    _fail(monkeypatch, "svd", lambda A: called_from("top_singular_subspaces"))
    with pytest.warns(
        LinalgFallbackWarning, match="SVD failed.*" + SITE_SKETCH_INIT.replace("(", r"\(").replace(")", r"\)")
    ):
        for _ in range(STEPS):
            _step(params, opt, gen)
    blocks = opt.state[params[0]]["blocks"][0]
    assert not bool(blocks["ready"].any()) and int(blocks["refresh_failures"].max()) == STEPS
    assert torch.equal(params[0], before)
    _assert_finite(params, opt)
    monkeypatch.undo()
    _step(params, opt, gen)
    _step(params, opt, gen)
    blocks = opt.state[params[0]]["blocks"][0]
    assert bool(blocks["ready"].all()) and int(blocks["refresh_failures"].max()) == 0
    assert not torch.equal(params[0], before)


def test_compiled_step_takes_the_fallback_without_a_graph_break(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``torch.compile(fullgraph=True)`` the ladder is an opaque custom op: every eigh failing
    (initialisation and canonicalisation) leaves the block waiting, with no graph break."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    params, opt = _setup([(6, 4)])
    gen = torch.Generator().manual_seed(1)
    before = params[0].detach().clone()
    _fail(monkeypatch, "eigh", lambda A: True)
    step = torch.compile(opt.step, backend=CompileCounterWithBackend("eager"), fullgraph=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(STEPS):
            params[0].grad = torch.randn(params[0].shape, generator=gen)
            step()
    torch._dynamo.reset()
    assert _site_warnings(record, SITE_INIT)
    blocks = opt.state[params[0]]["blocks"][0]
    assert not bool(blocks["ready"].any()) and int(blocks["refresh_failures"].max()) == STEPS
    assert torch.equal(params[0], before)
    _assert_finite(params, opt)


def test_persistent_initialisation_failures_raise_after_max_refresh_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params, opt = _setup([(6, 4)], max_refresh_failures=3)
    gen = torch.Generator().manual_seed(1)
    _fail(monkeypatch, "eigh", lambda A: called_from("initial_values"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinalgFallbackWarning)
        _step(params, opt, gen)
        _step(params, opt, gen)
        with pytest.raises(RuntimeError, match=r"3 consecutive refreshes or initialisations"):
            _step(params, opt, gen)
    _assert_finite(params, opt)


def test_projection_divergence_retries_in_float64_and_never_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reference divergences are not in the step; their eigh uses the ladder without damping
    and without the identity fallback: the exact value, or an error."""
    X = mats.planted(6, 10.0, dtype=F32, seed=0).matrix
    Y = mats.planted(6, 10.0, dtype=F32, seed=1).matrix
    expected = bregman_divergence(X.double(), Y.double(), "von_neumann")
    _fail(monkeypatch, "eigh", lambda A: A.dtype == F32)
    got = bregman_divergence(X, Y, "von_neumann")
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0.0)
    monkeypatch.undo()
    _fail(monkeypatch, "eigh", lambda A: True)
    with pytest.raises(RuntimeError, match="eigh failed"):
        bregman_divergence(X, Y, "logdet")
