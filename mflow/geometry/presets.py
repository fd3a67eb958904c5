"""Calabi-Yau presets by name: hypersurfaces in one P^n and complete intersections in products.

Single P^n: fermat_quintic, fermat_quartic (K3), fermat_cubic (torus), dwork (psi), random (n, seed).
Products / CICYs (h11 = number of factors): bicubic in P2 x P2 (psi), (2,4) in P1 x P3, the tetraquadric in
(P1)^4 (psi), two cubics in P5 (psi). The psi-type deformations follow the Fermat-plus-product form the
literature uses (e.g. cymetric's and cymyc's examples); psi = 0 is the Fermat point of each family.
"""
from __future__ import annotations

from itertools import combinations_with_replacement, product

import torch

from .cicy import CDTYPE, RDTYPE, CompleteIntersection, NotCalabiYauError


def fermat(n: int) -> CompleteIntersection:
    """sum_i z_i^{n+1} = 0 in P^n (cubic curve n=2, quartic K3 n=3, quintic n=4)."""
    k = (n + 1) * torch.eye(n + 1, dtype=torch.int64)
    return CompleteIntersection(k, torch.ones(n + 1, dtype=CDTYPE), f"fermat_{n}", {"n": n})


def dwork(psi: complex = 0.0, n: int = 4) -> CompleteIntersection:
    """Dwork family sum z_i^{n+1} - (n+1) psi prod z_i = 0; singular iff psi^{n+1} = 1."""
    psi = complex(psi)
    if abs(psi ** (n + 1) - 1) < 1e-12:
        raise NotCalabiYauError(
            f"the Dwork hypersurface is singular at psi^{n + 1} = 1 (psi = {psi}); choose another psi")
    k = torch.cat([(n + 1) * torch.eye(n + 1, dtype=torch.int64), torch.ones(1, n + 1, dtype=torch.int64)])
    c = torch.cat([torch.ones(n + 1, dtype=CDTYPE), torch.tensor([-(n + 1) * psi], dtype=CDTYPE)])
    return CompleteIntersection(k, c, "dwork", {"psi": [psi.real, psi.imag], "n": n})


def random_cy(n: int = 4, seed: int = 0) -> CompleteIntersection:
    """All degree-(n+1) monomials of P^n with seeded complex Gaussian coefficients."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.stack([torch.bincount(torch.tensor(c), minlength=n + 1)
                     for c in combinations_with_replacement(range(n + 1), n + 1)])
    c = torch.complex(torch.randn(len(k), generator=gen, dtype=RDTYPE), torch.randn(len(k), generator=gen, dtype=RDTYPE))
    return CompleteIntersection(k, c, "random", {"n": n, "seed": seed})


def random_cicy(dims, configuration, seed: int = 0, name: str = "random_cicy") -> CompleteIntersection:
    """Every monomial of each p_k's multidegree (configuration[k][i] in factor i) with seeded complex Gaussian
    coefficients: a generic, hence smooth, member of the family."""
    gen = torch.Generator().manual_seed(seed)
    mons, owner = [], []
    for k, qk in enumerate(configuration):
        per_factor = [[torch.bincount(torch.tensor(c, dtype=torch.int64), minlength=n + 1)
                       for c in combinations_with_replacement(range(n + 1), q)] for n, q in zip(dims, qk)]
        for parts in product(*per_factor):
            mons.append(torch.cat(parts))
            owner.append(k)
    k_ = torch.stack(mons)
    c = torch.complex(torch.randn(len(k_), generator=gen, dtype=RDTYPE), torch.randn(len(k_), generator=gen, dtype=RDTYPE))
    return CompleteIntersection(k_, c, name, {"seed": seed}, tuple(dims), torch.tensor(owner))


def bicubic(seed: int = 0) -> CompleteIntersection:
    """A generic bicubic in P2 x P2 (configuration [[3, 3]]; h11 = 2, chi = -162)."""
    return random_cicy((2, 2), [[3, 3]], seed, "bicubic")


def p1p3(seed: int = 0) -> CompleteIntersection:
    """A generic (2, 4) hypersurface in P1 x P3 (h11 = 2, chi = -168)."""
    return random_cicy((1, 3), [[2, 4]], seed, "p1p3")


def tetraquadric(seed: int = 0) -> CompleteIntersection:
    """A generic (2, 2, 2, 2) hypersurface in (P1)^4 (h11 = 4, chi = -128)."""
    return random_cicy((1, 1, 1, 1), [[2, 2, 2, 2]], seed, "tetraquadric")


def two_cubics(psi: complex = 0.5) -> CompleteIntersection:
    """The two cubics in P5 of the Libgober-Teitelbaum family (h11 = 1, chi = -144):
    x0^3 + x1^3 + x2^3 - 3 psi x3 x4 x5 = x3^3 + x4^3 + x5^3 - 3 psi x0 x1 x2 = 0; singular at psi = 0 and psi^6 = 1."""
    psi = complex(psi)
    if abs(psi) < 1e-12 or abs(psi**6 - 1) < 1e-12:
        raise NotCalabiYauError(f"the two cubics are singular at psi = 0 and psi^6 = 1 (psi = {psi}); choose another psi")
    e = 3 * torch.eye(6, dtype=torch.int64)
    mons = torch.cat([e[:3], torch.tensor([[0, 0, 0, 1, 1, 1]]), e[3:], torch.tensor([[1, 1, 1, 0, 0, 0]])])
    c = torch.tensor([1, 1, 1, -3 * psi, 1, 1, 1, -3 * psi], dtype=CDTYPE)
    return CompleteIntersection(mons, c, "two_cubics", {"psi": [psi.real, psi.imag]}, (5,),
                                torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))


PRESETS = ("fermat_quintic", "fermat_quartic", "fermat_cubic", "dwork", "random",
           "bicubic", "p1p3", "tetraquadric", "two_cubics")
EULER = {"fermat_quintic": -200, "dwork": -200, "fermat_quartic": 24, "fermat_cubic": 0, "bicubic": -162,
         "p1p3": -168, "tetraquadric": -128, "two_cubics": -144}  # topological chi, for the checks


def manifold(name: str, **params) -> CompleteIntersection:
    """A preset by name (module doc); params: psi (dwork, two_cubics), n and seed (random), seed (the generic CICYs),
    kahler (any: the moduli t, one per factor)."""
    kahler = params.pop("kahler", None)
    if name.startswith("fermat_") and params:
        raise ValueError(f"{name} takes no parameters, got {sorted(params)}")
    makers = {"fermat_quintic": lambda: _named(fermat(4), name), "fermat_quartic": lambda: _named(fermat(3), name),
              "fermat_cubic": lambda: _named(fermat(2), name), "dwork": lambda: dwork(**params),
              "random": lambda: random_cy(**params), "bicubic": lambda: bicubic(**params),
              "p1p3": lambda: p1p3(**params), "tetraquadric": lambda: tetraquadric(**params),
              "two_cubics": lambda: two_cubics(**params)}
    if name not in makers:
        raise ValueError(f"unknown manifold {name!r}; choose one of {PRESETS}")
    X = makers[name]()
    return X if kahler is None else X.with_kahler(kahler)


def _named(h: CompleteIntersection, name: str) -> CompleteIntersection:
    return CompleteIntersection(h.monomials, h.coefficients, name, {})


def surface_from_args(manifold_name: str, psi: float | None = None, ambient_n: int = 4, surface_seed: int = 0,
                      kahler=None) -> CompleteIntersection:
    """The manifold a config names: presets take only the parameters that apply to them (psi None: the preset's own
    default, 0 for dwork and 0.5 for two_cubics); kahler (t per factor, None = all 1) applies to every one."""
    kw = {} if kahler is None else {"kahler": tuple(kahler)}
    if psi is not None and manifold_name in ("dwork", "two_cubics"):
        kw["psi"] = psi
    if manifold_name == "random":
        return manifold("random", n=ambient_n, seed=surface_seed, **kw)
    if manifold_name in ("bicubic", "p1p3", "tetraquadric"):
        return manifold(manifold_name, seed=surface_seed, **kw)
    return manifold(manifold_name, **kw)
