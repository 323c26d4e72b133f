"""The representation-health metrics (train/health.py) tell collapsed features from healthy ones."""

import torch

from train.health import collapse_warning, health_metrics


def test_isotropic_features_are_healthy():
    z = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    h = health_metrics(z)
    assert 0.8 < h["health_std"] < 1.2 and h["health_std_min"] > 0.5  # about 1 for isotropic features
    assert h["health_rank"] > 0.8 * 32 and h["health_rank_max"] == 32
    assert collapse_warning(h) is None


def test_collapsed_features_warn():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 32, generator=g).expand(256, 32) + 1e-4 * torch.randn(256, 32, generator=g)
    h = health_metrics(z)
    assert h["health_std"] < 0.01 and h["health_rank"] < 1.5
    assert "collapsing" in collapse_warning(h)


def test_features_in_a_low_dimensional_subspace_have_a_low_rank():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(256, 3, generator=g) @ torch.randn(3, 64, generator=g)
    assert 1.5 < health_metrics(z)["health_rank"] < 3.5


def test_all_zero_features_are_rank_one_not_nan():
    h = health_metrics(torch.zeros(8, 4))
    assert h["health_rank"] == 1.0 and h["health_std"] == 0.0 and collapse_warning(h)


def test_non_finite_features_are_reported_not_raised():
    z = torch.randn(8, 4)
    z[3, 1] = float("nan")
    h = health_metrics(z)
    assert h["health_rank"] != h["health_rank"] and "not finite" in collapse_warning(h)
