"""The rank rule of :mod:`autotune.rank` on synthetic spectra with known answers."""

from __future__ import annotations

import pytest
import torch

from autotune.rank import calibration_beta2, choose_rank, explain_rank, rank_profile


def _planted(rank: int, d: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``rank`` spikes from 100 down to 20 on a flat floor of 1 (± ``noise``), shuffled."""
    gen = torch.Generator().manual_seed(seed)
    spikes = torch.linspace(100.0, 20.0, rank, dtype=torch.float64)
    floor = 1 + noise * (2 * torch.rand(d - rank, generator=gen, dtype=torch.float64) - 1)
    return torch.cat([spikes, floor])[torch.randperm(d, generator=gen)]  # any order is accepted


def _brute_share(lam: torch.Tensor, k: int) -> float:
    lam = lam.double().clamp_min(0).sort(descending=True).values
    if k == lam.numel():
        return 1.0
    tail = lam[k:]
    return float(1 - (tail - tail.mean()).abs().sum() / lam.sum())


def test_flat_spectrum_needs_rank_one():
    gen = torch.Generator().manual_seed(1)
    flat = 1 + 0.02 * torch.randn(64, generator=gen)
    assert choose_rank(flat) == 1


@pytest.mark.parametrize("rank", [1, 3, 7])
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_low_rank_plus_flat_gives_the_planted_rank(rank: int, noise: float):
    assert choose_rank(_planted(rank, 48, noise)) == rank


def test_rank_deficient_spectrum_keeps_every_non_zero_direction():
    lam = torch.cat([torch.linspace(2, 1, 10), torch.zeros(30)])
    assert choose_rank(lam) == 10


def test_all_zero_spectrum_gives_min_rank():
    assert choose_rank(torch.zeros(12)) == 1
    assert choose_rank(torch.zeros(12), min_rank=3) == 3


@pytest.mark.parametrize("mass", [0.5, 0.8, 0.9, 0.97])
@pytest.mark.parametrize("flatness", [1.5, 2.0, 4.0])
def test_choice_is_the_smallest_rank_meeting_mass_and_flatness(mass: float, flatness: float):
    lam = 1.0 / torch.arange(1, 65, dtype=torch.float64) ** 1.2  # power law: no flat tail
    choice = explain_rank(lam, mass=mass, flatness=flatness)
    share, ratio = rank_profile(lam)
    k = choice.rank
    assert not choice.capped
    assert share[k] >= mass and ratio[k] <= flatness
    assert all(share[j] < mass or ratio[j] > flatness for j in range(1, k))
    assert choice.share == pytest.approx(float(share[k])) and choice.tail_ratio == pytest.approx(
        float(ratio[k])
    )


def test_rank_grows_with_mass_and_shrinks_with_flatness():
    lam = 1.0 / torch.arange(1, 129, dtype=torch.float64)
    by_mass = [choose_rank(lam, mass=m, flatness=100.0) for m in (0.6, 0.8, 0.9, 0.95)]
    by_flat = [choose_rank(lam, mass=0.01, flatness=f) for f in (1.5, 2.0, 4.0, 8.0)]
    assert by_mass == sorted(by_mass) and by_mass[0] < by_mass[-1]
    assert by_flat == sorted(by_flat, reverse=True) and by_flat[0] > by_flat[-1]


def test_budget_caps_the_rank_and_is_reported():
    lam = _planted(6, 40)
    assert choose_rank(lam, max_rank=4) == 4
    choice = explain_rank(lam, max_rank=4)
    assert choice.capped and choice.rank == 4
    assert not explain_rank(lam, max_rank=10).capped


def test_stack_of_blocks_gets_the_largest_block_rank():
    stack = torch.stack([_planted(2, 32), _planted(5, 32, seed=3), torch.ones(32)])
    assert choose_rank(stack) == 5
    assert explain_rank(stack).dim == 32


def test_share_matches_brute_force():
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        lam = torch.rand(37, generator=gen, dtype=torch.float64) ** 4 * 10
        lam[torch.randint(0, 37, (5,), generator=gen)] = 0.0  # ties and zeros
        share, ratio = rank_profile(lam)
        assert share.shape == (38,) and ratio.shape == (38,)
        for k in range(38):
            assert float(share[k]) == pytest.approx(_brute_share(lam, k), abs=1e-12)
        assert float(ratio[-1]) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mass": 0.0}, "mass"),
        ({"mass": 1.5}, "mass"),
        ({"flatness": 0.5}, "flatness"),
        ({"max_rank": 0}, "max_rank"),
        ({"min_rank": 0}, "min_rank"),
    ],
)
def test_invalid_options_raise(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        choose_rank(torch.ones(8), **kwargs)


def test_empty_spectrum_raises():
    with pytest.raises(ValueError, match="at least one entry"):
        choose_rank(torch.ones(3, 0))


def test_calibration_beta2_forgets_the_initial_floor():
    assert calibration_beta2(500) == 0.98
    beta = calibration_beta2(40)
    assert beta**39 == pytest.approx(0.01)
    with pytest.raises(ValueError, match="at least 2"):
        calibration_beta2(1)
