"""Projective hypersurfaces X = {p(z) = 0} in P^n and their Calabi-Yau presets.

A polynomial is held as integer exponents ``monomials`` [M, n+1] and complex
``coefficients`` [M]. Everything is batched over points: ``z`` is [N, n+1] complex128.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations_with_replacement

import torch

CDTYPE = torch.complex128
RDTYPE = torch.float64


class NotCalabiYauError(ValueError):
    """The polynomial does not define a smooth Calabi-Yau hypersurface."""


@dataclass(frozen=True)
class Hypersurface:
    """p(z) = sum_m c_m prod_i z_i^{k_mi} in P^n (REFERENCE.md section 1).

    Construction checks the CY condition: p homogeneous of degree n+1.
    """

    monomials: torch.Tensor  # [M, n+1] int64
    coefficients: torch.Tensor  # [M] complex128
    name: str = "custom"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        k = torch.as_tensor(self.monomials, dtype=torch.int64)
        c = torch.as_tensor(self.coefficients).to(CDTYPE)
        if k.ndim != 2 or c.ndim != 1 or k.shape[0] != c.shape[0] or k.shape[0] == 0:
            raise NotCalabiYauError(
                f"monomials must be [M, n+1] and coefficients [M]; got {tuple(k.shape)} and {tuple(c.shape)}"
            )
        if (k < 0).any():
            raise NotCalabiYauError("monomial exponents must be non-negative integers")
        keep = c != 0
        k, c = k[keep], c[keep]
        if k.shape[0] == 0:
            raise NotCalabiYauError("the polynomial is identically zero")
        n = k.shape[1] - 1
        if n < 2:
            raise NotCalabiYauError(f"need P^n with n >= 2 for a hypersurface of positive dimension; got n = {n}")
        degrees = k.sum(1)
        if (degrees != degrees[0]).any():
            raise NotCalabiYauError(
                f"polynomial is not homogeneous: monomial degrees {sorted(set(degrees.tolist()))}; "
                "a hypersurface of P^n needs every monomial of the same degree"
            )
        if int(degrees[0]) != n + 1:
            raise NotCalabiYauError(
                f"degree {int(degrees[0])} in P^{n} is not Calabi-Yau: the anticanonical degree is n+1 = {n + 1} "
                f"(e.g. a quintic in P^4, a quartic in P^3, a cubic in P^2)"
            )
        object.__setattr__(self, "monomials", k)
        object.__setattr__(self, "coefficients", c)

    # ------------------------------------------------------------------ basics
    @property
    def n(self) -> int:
        """Dimension of the ambient P^n."""
        return self.monomials.shape[1] - 1

    @property
    def dim(self) -> int:
        """Complex dimension n-1 of X."""
        return self.n - 1

    @property
    def degree(self) -> int:
        return self.n + 1

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """p(z): [..., n+1] -> [...]."""
        c, k = self.coefficients.to(z.device), self.monomials.to(z.device)
        return _blocked(lambda zb: (c * _monomials(zb, k)).sum(-1), z, len(k))

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        """dp/dz_i: [..., n+1] -> [..., n+1] (holomorphic derivative)."""
        coord, dk, factor = (t.to(z.device) for t in self._derivative_terms)

        def grad(zb):
            terms = factor * _monomials(zb, dk)  # [B, T]
            return torch.zeros(len(zb), self.n + 1, dtype=CDTYPE, device=zb.device).index_add(1, coord, terms)

        return _blocked(grad, z, len(dk))

    @cached_property
    def _derivative_terms(self):
        """The non-zero terms c_m k_mi z^(k_m - e_i) of dp/dz_i: coordinate i [T], exponents [T, n+1], factor [T]."""
        m, i = (self.monomials > 0).nonzero(as_tuple=True)
        dk = self.monomials[m].clone()
        dk[torch.arange(len(m)), i] -= 1
        return i, dk, self.coefficients[m] * self.monomials[m, i].to(CDTYPE)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """Relative size |p(z)| / sum_m |c_m z^{k_m}| of p at z: [..., n+1] -> [...]."""
        c, k = self.coefficients.to(z.device), self.monomials.to(z.device)
        terms = _blocked(lambda zb: c * _monomials(zb, k), z, len(k))
        return terms.sum(-1).abs() / terms.abs().sum(-1).clamp_min(1e-300)

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "params": dict(self.params),
            "monomials": self.monomials.tolist(),
            "coefficients": [[float(c.real), float(c.imag)] for c in self.coefficients],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Hypersurface":
        coeffs = torch.tensor([complex(re, im) for re, im in d["coefficients"]], dtype=CDTYPE)
        return cls(torch.tensor(d["monomials"]), coeffs, d.get("name", "custom"), d.get("params", {}))

    def fingerprint(self) -> str:
        """Short hash of the polynomial, to tell data sets of different manifolds apart."""
        d = self.to_dict()
        blob = json.dumps({"monomials": d["monomials"], "coefficients": d["coefficients"]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_smooth_at(self, z: torch.Tensor, dp: torch.Tensor | None = None, tol: float = 1e-10) -> None:
        """Refuse points where dp vanishes (singular points of X): z [N, n+1] scaled to max |z_i| = 1
        (or any z with dp = dp/dz there given)."""
        if dp is None:
            z = z / z.abs().amax(-1, keepdim=True)
            dp = self.gradient(z)
        g = dp.abs().amax(-1)
        scale = float((self.coefficients.abs() * self.monomials.amax(-1)).sum())
        bad = g < tol * scale
        if bad.any():
            i = int(bad.nonzero()[0])
            raise NotCalabiYauError(
                f"X is singular: dp vanishes at a point of X ({int(bad.sum())} of {len(z)} points, "
                f"e.g. z = {z[i].tolist()}); choose parameters for which X is smooth"
            )


def _monomials(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """prod_i z_i^{k_mi}: z [B, n+1], k [M, n+1] -> [B, M].

    Powers come from a table z_i^e, e = 0..max(k), built by repeated multiplication and laid
    out points-last so that picking the factors is a row gather.
    """
    n1, B = z.shape[-1], z.shape[0]
    zt = z.T
    powers = [torch.ones_like(zt)]
    for _ in range(int(k.max())):
        powers.append(powers[-1] * zt)
    table = torch.stack(powers)  # [e, n+1, B]
    rows = (k * n1 + torch.arange(n1, device=z.device)).reshape(-1)
    return table.reshape(-1, B).index_select(0, rows).reshape(len(k), n1, B).prod(1).T


def _blocked(fn, z: torch.Tensor, terms: int, budget: int = 2**24) -> torch.Tensor:
    """Apply fn to z [..., n+1] in blocks of points so that blocks hold about budget numbers."""
    flat = z.reshape(-1, z.shape[-1])
    size = max(1, budget // (terms * z.shape[-1]))
    out = torch.cat([fn(flat[i : i + size]) for i in range(0, len(flat), size)]) if len(flat) else fn(flat)
    return out.reshape(*z.shape[:-1], *out.shape[1:])


# ---------------------------------------------------------------------- presets
def fermat(n: int) -> Hypersurface:
    """sum_i z_i^{n+1} = 0 in P^n (cubic curve n=2, quartic K3 n=3, quintic n=4)."""
    k = (n + 1) * torch.eye(n + 1, dtype=torch.int64)
    return Hypersurface(k, torch.ones(n + 1, dtype=CDTYPE), f"fermat_{n}", {"n": n})


def dwork(psi: complex = 0.0, n: int = 4) -> Hypersurface:
    """Dwork family sum z_i^{n+1} - (n+1) psi prod z_i = 0; singular iff psi^{n+1} = 1."""
    psi = complex(psi)
    if abs(psi ** (n + 1) - 1) < 1e-12:
        raise NotCalabiYauError(
            f"the Dwork hypersurface is singular at psi^{n + 1} = 1 (psi = {psi}); choose another psi"
        )
    k = torch.cat([(n + 1) * torch.eye(n + 1, dtype=torch.int64), torch.ones(1, n + 1, dtype=torch.int64)])
    c = torch.cat([torch.ones(n + 1, dtype=CDTYPE), torch.tensor([-(n + 1) * psi], dtype=CDTYPE)])
    return Hypersurface(k, c, "dwork", {"psi": [psi.real, psi.imag], "n": n})


def random_cy(n: int = 4, seed: int = 0) -> Hypersurface:
    """All degree-(n+1) monomials of P^n with seeded complex Gaussian coefficients."""
    gen = torch.Generator().manual_seed(seed)
    mons = [
        torch.bincount(torch.tensor(c), minlength=n + 1)
        for c in combinations_with_replacement(range(n + 1), n + 1)
    ]
    k = torch.stack(mons)
    c = torch.complex(torch.randn(len(k), generator=gen, dtype=RDTYPE), torch.randn(len(k), generator=gen, dtype=RDTYPE))
    return Hypersurface(k, c, "random", {"n": n, "seed": seed})


PRESETS = ("fermat_quintic", "fermat_quartic", "fermat_cubic", "dwork", "random")


def manifold(name: str, **params) -> Hypersurface:
    """A preset by name: fermat_quintic, fermat_quartic, fermat_cubic, dwork (psi), random (n, seed)."""
    if name.startswith("fermat_") and params:
        raise ValueError(f"{name} takes no parameters, got {sorted(params)}")
    if name == "fermat_quintic":
        return _named(fermat(4), name)
    if name == "fermat_quartic":
        return _named(fermat(3), name)
    if name == "fermat_cubic":
        return _named(fermat(2), name)
    if name == "dwork":
        return dwork(**params)
    if name == "random":
        return random_cy(**params)
    raise ValueError(f"unknown manifold {name!r}; choose one of {PRESETS}")


def _named(h: Hypersurface, name: str) -> Hypersurface:
    return Hypersurface(h.monomials, h.coefficients, name, {})


def surface_from_args(manifold_name: str, psi: float = 0.0, ambient_n: int = 4, surface_seed: int = 0) -> Hypersurface:
    """The hypersurface a config names: presets take only the parameters that apply to them."""
    if manifold_name == "dwork":
        return manifold("dwork", psi=psi)
    if manifold_name == "random":
        return manifold("random", n=ambient_n, seed=surface_seed)
    return manifold(manifold_name)
