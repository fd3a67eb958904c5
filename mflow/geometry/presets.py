"""Calabi-Yau presets by name: hypersurfaces in one P^n and complete intersections in products.

Single P^n: fermat_quintic, fermat_quartic (K3), fermat_cubic (torus), dwork (psi), random (n, seed).
Products / CICYs (h11 = number of factors): bicubic in P2 x P2 (psi), (2,4) in P1 x P3, the tetraquadric in
(P1)^4 (psi), two cubics in P5 (psi). The psi-type deformations follow the Fermat-plus-product form the
literature uses (e.g. cymetric's and cymyc's examples); psi = 0 is the Fermat point of each family.
The real psi families of dwork and two_cubics (data.psi_range): their members, singular members (SINGULAR_PSI) and
the member through a point (psi_of_points, psi_member_gradient).
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


PSI_FAMILIES = ("dwork", "two_cubics")
SINGULAR_PSI = {"dwork": (1.0,), "two_cubics": (-1.0, 0.0, 1.0)}  # the real psi of singular members (docstrings)


def psi_member(X: CompleteIntersection, psi: complex) -> CompleteIntersection:
    """The member at psi of X's family (X a dwork or two_cubics preset, possibly a psi family's reference), at X's
    Kaehler moduli."""
    if X.name not in PSI_FAMILIES:
        raise ValueError(f"{X.name} is not a psi family: choose one of {PSI_FAMILIES}")
    Y = dwork(psi, X.params["n"]) if X.name == "dwork" else two_cubics(psi)
    return Y.with_kahler(X.kahler)


def check_psi_range(name: str, psi_range) -> tuple[float, float]:
    """(lo, hi) of a real psi range of the family ``name``, lo < hi; ValueError naming the singular member it
    contains."""
    lo, hi = (float(v) for v in psi_range)
    if name not in PSI_FAMILIES:
        raise ValueError(f"psi_range on {name}: psi families are {PSI_FAMILIES}")
    if not lo < hi:
        raise ValueError(f"psi_range={[lo, hi]} on {name}: need lo < hi (one member: set data.psi instead)")
    bad = [s for s in SINGULAR_PSI[name] if lo <= s <= hi]
    if bad:
        raise ValueError(f"psi_range={[lo, hi]} on {name} contains the singular member psi = {bad[0]:g}: choose a "
                         f"range clear of {list(SINGULAR_PSI[name])}")
    return lo, hi


def psi_family(X: CompleteIntersection, psi_range) -> CompleteIntersection:
    """X (a member) as the reference of the real family over psi_range = (lo, hi): params["psi_range"] marks it, so
    that models built on it read psi from the points (psi_of_points). Refuses a range through a singular member."""
    lo, hi = check_psi_range(X.name, psi_range)
    return CompleteIntersection(X.monomials, X.coefficients, X.name, {**X.params, "psi_range": [lo, hi]}, X.dims,
                                X.owner, X.kahler)


def psi_pencil(X: CompleteIntersection) -> tuple[CompleteIntersection, CompleteIntersection, complex, complex]:
    """(X_a, X_b, a, b): two members of X's family (p_psi is affine in psi, so they span it) with their psi, their
    polynomial caches filled (so that derivative transforms may call them)."""
    a = complex(*X.params["psi"])
    b = a + 0.5j  # never a singular member: none has Im psi = Im a + 0.5 with Im a = 0 (psi^5 = 1, psi^6 = 1, 0)
    Xa, Xb = psi_member(X, a), psi_member(X, b)
    for Y in (Xa, Xb):
        one = torch.ones(1, Y.n_coords, dtype=CDTYPE)
        Y(one), Y.gradient(one)
    return Xa, Xb, a, b


def psi_of_points(pencil, z: torch.Tensor) -> torch.Tensor:
    """psi of the family member through each point, from its first equation (psi_pencil's pencil): z [N, D] ->
    [N] complex (real on the real members; a C*-invariant rational function of z)."""
    Xa, Xb, a, b = pencil
    pa, pb = Xa(z)[..., 0], Xb(z)[..., 0]
    return a - (b - a) * pa / (pb - pa)


def psi_member_gradient(pencil, z: torch.Tensor) -> torch.Tensor:
    """dp/dz of the member through each point (psi_of_points): z [N, D] -> [N, K, D]."""
    Xa, Xb, a, b = pencil
    s = ((psi_of_points(pencil, z) - a) / (b - a))[..., None, None]
    ga = Xa.gradient(z)
    return ga + s * (Xb.gradient(z) - ga)


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
