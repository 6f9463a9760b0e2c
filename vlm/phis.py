"""PHI-S: PCA-Hadamard isotropic standardisation of teacher features (arXiv 2410.01680).

For one teacher's features ``x`` (D dims): streamed mean ``μ`` and covariance ``Σ = UΛUᵀ`` (float64,
mergeable batch moments), a normalised orthogonal matrix ``H`` that spreads the variance evenly over
dimensions, and one isotropic scale ``α = 1/√mean(Λ)``::

    x′ = α · H · Uᵀ (x − μ)          inverse:  x = (1/α) · U · Hᵀ · x′ + μ

Every dimension of ``x′`` then has unit variance on the fitted data, by one rotation and one scale
(not whitening: the relative geometry of the features is kept). ``H`` is a Hadamard matrix when one
of order D is constructible here (Sylvester for powers of two, Paley I for ``q + 1`` with ``q`` a prime
≡ 3 mod 4, and their Kronecker products); for any other width, the rule is a sequence of Givens
rotations (Bendel–Mickey) built from ``Λ`` that makes the rotated covariance's diagonal exactly
``mean(Λ)`` — the property the Hadamard matrix gives — so unit variance holds for every D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data.errors import M3Error

__all__ = ["FeatureMoments", "PHISStandardizer", "PlainStandardizer", "hadamard", "equalizing_rotation", "PHISError"]


class PHISError(M3Error, ValueError):
    """PHI-S could not be fitted or applied (too few samples, wrong width)."""


@dataclass
class FeatureMoments:
    """Streaming, mergeable first and second moments in float64 (Chan et al. parallel update).

    count: samples seen; mean: ``(D,)``; m2: ``(D, D)`` sum of outer products of deviations.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, dim: int) -> "FeatureMoments":
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    @classmethod
    def from_batch(cls, x: torch.Tensor) -> "FeatureMoments":
        """Moments of ``x`` shaped ``(..., D)`` (all leading axes are samples)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        mean = x.mean(0)
        dev = x - mean
        return cls(int(x.shape[0]), mean, dev.T @ dev)

    def update(self, x: torch.Tensor) -> "FeatureMoments":
        """Add a batch ``(..., D)`` in place; returns self."""
        merged = self.merge(FeatureMoments.from_batch(x))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        return self

    def merge(self, other: "FeatureMoments") -> "FeatureMoments":
        """Moments of the union of both sample sets (exact, order-independent up to rounding)."""
        if self.count == 0:
            return FeatureMoments(other.count, other.mean.clone(), other.m2.clone())
        if other.count == 0:
            return FeatureMoments(self.count, self.mean.clone(), self.m2.clone())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + torch.outer(delta, delta) * (self.count * other.count / n)
        return FeatureMoments(n, mean, m2)

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance ``(D, D)`` float64."""
        if self.count < 2:
            raise PHISError(f"PHI-S moments: need at least 2 feature vectors, got {self.count}; stream more data.")
        return self.m2 / self.count


def hadamard(n: int) -> np.ndarray | None:
    """A ±1 Hadamard matrix of order ``n`` (``H Hᵀ = n I``), or None when no construction here applies.

    Sylvester (2^k), Paley I (q + 1, q prime ≡ 3 mod 4) and Kronecker products of the two.
    """
    if n == 1:
        return np.ones((1, 1))
    if n == 2:
        return np.array([[1.0, 1.0], [1.0, -1.0]])
    if n % 4:
        return None
    if n & (n - 1) == 0:
        h2 = hadamard(2)
        return np.kron(h2, hadamard(n // 2))
    q = n - 1
    if _is_prime(q) and q % 4 == 3:
        return _paley_one(q)
    for k in range(1, int(math.log2(n)) + 1):  # n = 2^k · m with a Paley factor m
        if n % (2**k) == 0 and (m := n // (2**k)) % 4 == 0 and m > 2:
            hm = hadamard(m)
            if hm is not None:
                return np.kron(hadamard(2**k), hm)
    return None


def equalizing_rotation(eigenvalues: np.ndarray) -> np.ndarray:
    """Orthogonal ``R`` with ``diag(R · diag(λ) · Rᵀ) = mean(λ)`` for every entry.

    A normalised Hadamard matrix when one of this order exists; otherwise Bendel–Mickey Givens
    rotations (each fixes one diagonal entry to the mean; at most D − 1 of them).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    d = lam.shape[0]
    h = hadamard(d)
    if h is not None:
        return h / math.sqrt(d)
    target = lam.mean()
    a = np.diag(lam / target)  # work with unit target
    r = np.eye(d)
    for _ in range(d):
        diag = np.diag(a)
        low, high = np.flatnonzero(diag < 1 - 1e-12), np.flatnonzero(diag > 1 + 1e-12)
        if low.size == 0 or high.size == 0:
            break
        i, j = int(low[0]), int(high[0])
        aii, ajj, aij = a[i, i], a[j, j], a[i, j]
        # τ solves τ²(a_jj − 1) + 2τ·a_ij + (a_ii − 1) = 0, so the rotated a_ii becomes 1
        tau = (-aij + math.sqrt(max(aij * aij - (ajj - 1) * (aii - 1), 0.0))) / (ajj - 1)
        c = 1.0 / math.sqrt(1.0 + tau * tau)
        s = c * tau
        g = np.eye(d)
        g[i, i], g[i, j], g[j, i], g[j, j] = c, s, -s, c
        a = g @ a @ g.T
        r = g @ r
    return r


class PHISStandardizer(nn.Module):
    """Apply PHI-S fitted from :class:`FeatureMoments`: ``forward`` (x′) and ``inverse`` (x).

    Input and output ``(..., D)``; buffers in float64, computation in the input's dtype.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("matrix", torch.eye(dim, dtype=torch.float64))  # α H Uᵀ
        self.register_buffer("alpha", torch.ones((), dtype=torch.float64))

    @classmethod
    def fit(cls, moments: FeatureMoments) -> "PHISStandardizer":
        cov = moments.covariance.numpy()
        lam, u = np.linalg.eigh(cov)
        u = _canonical_signs(u)
        lam = np.clip(lam, 0.0, None)
        if lam.mean() <= 0:
            raise PHISError("PHI-S: the teacher features have zero variance; check that the teacher is not constant.")
        alpha = 1.0 / math.sqrt(lam.mean())
        rot = equalizing_rotation(lam)
        module = cls(cov.shape[0])
        module.mean.copy_(moments.mean)
        module.matrix.copy_(torch.from_numpy(alpha * rot @ u.T))
        module.alpha.fill_(alpha)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        m = self.matrix.to(x.dtype)
        return (x - self.mean.to(x.dtype)) @ m.T

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Exact inverse: ``matrix`` is α times orthogonal, so its inverse is ``matrixᵀ / α²``."""
        self._check(y)
        m_inv = (self.matrix.T / self.alpha**2).to(y.dtype)
        return y @ m_inv.T + self.mean.to(y.dtype)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise PHISError(f"PHI-S fitted for {self.dim}-dim features, got last dim {x.shape[-1]}; refit for this teacher.")


class PlainStandardizer(PHISStandardizer):
    """The baseline PHI-S is compared with: per-teacher ``(x − μ) / σ_global`` with one scalar σ
    (the RADIO "global standardisation"), same interface."""

    @classmethod
    def fit(cls, moments: FeatureMoments) -> "PlainStandardizer":
        cov = moments.covariance
        sigma = math.sqrt(float(torch.diagonal(cov).mean()))
        if sigma <= 0:
            raise PHISError("plain standardisation: the teacher features have zero variance.")
        module = cls(cov.shape[0])
        module.mean.copy_(moments.mean)
        module.matrix.copy_(torch.eye(cov.shape[0], dtype=torch.float64) / sigma)
        module.alpha.fill_(1.0 / sigma)
        return module


def _canonical_signs(u: np.ndarray) -> np.ndarray:
    """Eigenvectors with their largest-magnitude entry positive, so the fit is deterministic."""
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % k for k in range(2, int(math.isqrt(q)) + 1))


def _paley_one(q: int) -> np.ndarray:
    """Paley construction I: order q + 1 from the quadratic-residue character of GF(q)."""
    residues = {(k * k) % q for k in range(1, q)}
    chi = np.array([0.0] + [1.0 if k in residues else -1.0 for k in range(1, q)])
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])  # Jacobsthal matrix
    n = q + 1
    s = np.zeros((n, n))
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = jac
    return s + np.eye(n)
