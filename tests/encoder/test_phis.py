"""PHI-S: unit variance per dimension, exact inverse, agreement with a plain numpy reference,
Hadamard constructions and the rule for widths without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard as scipy_hadamard

from vlm.phis import FeatureMoments, PHISStandardizer, PlainStandardizer, equalizing_rotation, hadamard


def _features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Anisotropic correlated features: a few dominant directions, like a teacher's."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, d, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ basis.T + torch.linspace(-3, 3, d, dtype=torch.float64)


@pytest.mark.parametrize("d", [16, 12, 10, 7])  # Sylvester, Paley, Givens rule (even and odd)
def test_every_dimension_has_unit_variance(d):
    x = _features(4000, d)
    phis = PHISStandardizer.fit(FeatureMoments.from_batch(x))
    y = phis(x)
    var = y.var(0, unbiased=False)
    assert torch.allclose(var, torch.ones(d, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(y.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-8)
    # not whitening: the covariance stays anisotropic (one rotation and one scale only)
    cov = torch.cov(y.T, correction=0)
    assert (cov - torch.diag(torch.diagonal(cov))).abs().max() > 0.1


def test_inverse_is_exact():
    x = _features(500, 32)
    phis = PHISStandardizer.fit(FeatureMoments.from_batch(x))
    assert torch.allclose(phis.inverse(phis(x)), x, atol=1e-10)
    assert torch.allclose(phis(phis.inverse(x)), x, atol=1e-10)


def test_streamed_moments_equal_one_pass():
    x = _features(1000, 8)
    streamed = FeatureMoments.empty(8)
    for chunk in x.split(137):
        streamed.update(chunk)
    merged = FeatureMoments.from_batch(x[:300]).merge(FeatureMoments.from_batch(x[300:]))
    ref = torch.cov(x.T, correction=0)
    for m in (streamed, merged):
        assert m.count == 1000
        assert torch.allclose(m.mean, x.mean(0), atol=1e-12)
        assert torch.allclose(m.covariance, ref, atol=1e-10)


def test_matches_plain_numpy_reference():
    x = _features(3000, 16, seed=3)
    phis = PHISStandardizer.fit(FeatureMoments.from_batch(x))
    xn = x.numpy()
    mu = xn.mean(0)
    lam, u = np.linalg.eigh(np.cov(xn.T, bias=True))
    u = u * np.sign(u[np.abs(u).argmax(0), np.arange(16)])  # same sign convention
    h = scipy_hadamard(16) / 4.0
    ref = (1 / np.sqrt(lam.mean())) * (h @ u.T @ (xn - mu).T).T
    assert np.allclose(phis(x).numpy(), ref, atol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 24, 44, 48, 64, 96, 192, 256, 384, 768])
def test_hadamard_orders(n):
    h = hadamard(n)
    assert h is not None and set(np.unique(h)) <= {-1.0, 1.0}
    assert np.array_equal(h @ h.T, n * np.eye(n))


def test_widths_without_hadamard_use_an_exact_rotation():
    assert hadamard(10) is None and hadamard(36) is None
    lam = np.sort(np.random.default_rng(0).gamma(0.5, size=36))[::-1]
    r = equalizing_rotation(lam)
    assert np.allclose(r @ r.T, np.eye(36), atol=1e-10)
    assert np.allclose(np.diag(r @ np.diag(lam) @ r.T), lam.mean(), atol=1e-10)


def test_plain_baseline_and_errors():
    x = _features(2000, 6)
    plain = PlainStandardizer.fit(FeatureMoments.from_batch(x))
    y = plain(x)
    assert abs(float(y.var(0, unbiased=False).mean()) - 1) < 1e-8  # unit on average only
    assert float(y.var(0).max() / y.var(0).min()) > 3  # the imbalance PHI-S removes
    with pytest.raises(ValueError, match="refit"):
        plain(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        PHISStandardizer.fit(FeatureMoments.from_batch(x[:1]))
