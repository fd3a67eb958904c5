"""Complete intersections X = {p_1 = ... = p_K = 0} in P^{n_1} x ... x P^{n_m}, with Kaehler moduli t.

A point is one vector z [D] of all homogeneous coordinates, factor after factor (D = sum_i (n_i + 1));
batches are z [N, D] complex128. The K polynomials are held together: integer exponents ``monomials``
[M, D], complex ``coefficients`` [M] and ``owner`` [M] (which p_k a monomial belongs to). A hypersurface in
one P^n (the quintic) is the case m = K = 1 of the same code.

Calabi-Yau condition: p_k is homogeneous of degree q_ki in factor i, and sum_k q_ki = n_i + 1 for every
factor (the columns of the configuration matrix [n_i | q_ki]). The Kaehler form is J = sum_i t_i J_i, J_i
the Fubini-Study form of factor i, so that int_X J^d = sum d_{i1..id} t_i1 ... t_id with the intersection
numbers d_{i..} of :meth:`CompleteIntersection.intersection_number` (docs/conventions.md section 1).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

CDTYPE = torch.complex128
RDTYPE = torch.float64


class NotCalabiYauError(ValueError):
    """The polynomials do not define a smooth Calabi-Yau complete intersection."""


@dataclass(frozen=True)
class CompleteIntersection:
    """p_k(z) = sum_{m: owner_m = k} c_m prod_I z_I^{k_mI}, k = 1..K, in P^{dims[0]} x ... (module doc).

    monomials [M, D] int64, coefficients [M] complex128, dims (n_1, ..., n_m) (default: one P^{D-1}),
    owner [M] int64 (default: all in p_1), kahler (t_1, ..., t_m) > 0 (default: all 1).
    Construction checks the CY condition; smoothness is checked at the points one samples.
    """

    monomials: torch.Tensor
    coefficients: torch.Tensor
    name: str = "custom"
    params: dict = field(default_factory=dict)
    dims: tuple = ()
    owner: torch.Tensor | None = None
    kahler: tuple = ()

    def __post_init__(self):
        k = torch.as_tensor(self.monomials, dtype=torch.int64)
        c = torch.as_tensor(self.coefficients).to(CDTYPE)
        if k.ndim != 2 or c.ndim != 1 or k.shape[0] != c.shape[0] or k.shape[0] == 0:
            raise NotCalabiYauError(
                f"monomials must be [M, D] and coefficients [M]; got {tuple(k.shape)} and {tuple(c.shape)}")
        owner = torch.zeros(len(k), dtype=torch.int64) if self.owner is None else torch.as_tensor(self.owner).long()
        dims = tuple(int(n) for n in self.dims) or (k.shape[1] - 1,)
        if owner.shape != (len(k),) or (owner < 0).any():
            raise NotCalabiYauError(f"owner must be [M] = [{len(k)}] polynomial indices >= 0, got {tuple(owner.shape)}")
        if sum(n + 1 for n in dims) != k.shape[1] or min(dims) < 1:
            raise NotCalabiYauError(f"factors P^{dims} have {sum(n + 1 for n in dims)} coordinates, the monomials "
                                    f"{k.shape[1]}: give dims matching the monomials' columns")
        if (k < 0).any():
            raise NotCalabiYauError("monomial exponents must be non-negative integers")
        keep = c != 0
        k, c, owner = k[keep], c[keep], owner[keep]
        K = int(owner.max()) + 1 if len(owner) else 0
        if K == 0 or torch.bincount(owner, minlength=K).min() == 0:
            raise NotCalabiYauError("a polynomial is identically zero")
        kahler = tuple(float(t) for t in self.kahler) or (1.0,) * len(dims)
        if len(kahler) != len(dims) or min(kahler) <= 0 or not all(math.isfinite(t) for t in kahler):
            raise NotCalabiYauError(f"Kaehler moduli t = {kahler}: need {len(dims)} positive numbers, one per factor")
        object.__setattr__(self, "monomials", k)
        object.__setattr__(self, "coefficients", c)
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "kahler", kahler)
        self._check_calabi_yau()

    def _check_calabi_yau(self):
        degrees = torch.stack([self.monomials[:, s].sum(1) for s in self.factor_slices], 1)  # [M, m]
        q = []
        for k in range(self.K):
            dk = degrees[self.owner == k]
            if (dk != dk[0]).any():
                raise NotCalabiYauError(
                    f"polynomial {k + 1} is not homogeneous in every factor: monomial degrees per factor "
                    f"{sorted(set(map(tuple, dk.tolist())))}; every monomial needs the same degree in each P^n_i")
            q.append(dk[0])
        q = torch.stack(q)  # [K, m]
        if self.dim < 1:
            raise NotCalabiYauError(f"{self.K} equations in {self.ambient} leave dimension {self.dim}: need >= 1")
        need = torch.tensor([n + 1 for n in self.dims])
        if (q.sum(0) != need).any():
            raise NotCalabiYauError(
                f"degrees {q.tolist()} (per polynomial and factor) in {self.ambient} are not Calabi-Yau: each factor's "
                f"degrees must sum to n_i + 1 = {need.tolist()} (e.g. a quintic in P^4, a bicubic in P^2 x P^2)")
        object.__setattr__(self, "_q", q)

    # ------------------------------------------------------------------ structure
    @property
    def K(self) -> int:
        """Number of equations."""
        return int(self.owner.max()) + 1

    @property
    def n_coords(self) -> int:
        """D = sum_i (n_i + 1) homogeneous coordinates."""
        return self.monomials.shape[1]

    @property
    def dim(self) -> int:
        """Complex dimension sum_i n_i - K of X."""
        return sum(self.dims) - self.K

    @property
    def configuration(self) -> list[list[int]]:
        """q_ki: the degree of p_k in factor i, [K][m]."""
        return self._q.tolist()

    @property
    def ambient(self) -> str:
        return " x ".join(f"P^{n}" for n in self.dims)

    @cached_property
    def factor_slices(self) -> tuple[slice, ...]:
        starts = [0, *itertools.accumulate(n + 1 for n in self.dims)]
        return tuple(slice(a, b) for a, b in zip(starts, starts[1:]))

    @cached_property
    def factor_of(self) -> torch.Tensor:
        """The factor i of each coordinate: [D] int64."""
        return torch.repeat_interleave(torch.arange(len(self.dims)), torch.tensor([n + 1 for n in self.dims]))

    # ------------------------------------------------------------------ polynomials
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """p_k(z): [..., D] -> [..., K]."""
        return self._values(z)

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        """dp_k/dz_I: [..., D] -> [..., K, D] (holomorphic derivatives)."""
        return self._gradients(z).unflatten(-1, (self.K, self.n_coords))

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """Largest relative size |p_k(z)| / sum_m |c_m z^{k_m}| over the K equations: [..., D] -> [...]."""
        basis = self._values
        C = basis.coefficients.to(z.device)

        def rel(zb):
            parts = basis.parts(zb)
            size = basis.contract(C.abs().to(C.dtype), [p.abs().to(p.dtype) for p in parts]).real
            return (basis.contract(C, parts).abs() / size.clamp_min(1e-300)).amax(0)

        return _blocked(rel, z, basis.terms)

    @cached_property
    def _values(self) -> "Polynomials":
        K = self.K
        return Polynomials(self, self.monomials, self.coefficients[:, None] * torch.eye(K, dtype=CDTYPE)[self.owner])

    @cached_property
    def _gradients(self) -> "Polynomials":
        """dp_k/dz_I = sum_m c_m k_mI z^(k_m - e_I), one output per (k, I)."""
        m, i = (self.monomials > 0).nonzero(as_tuple=True)
        dk = self.monomials[m].clone()
        dk[torch.arange(len(m)), i] -= 1
        coef = torch.zeros(len(m), self.K * self.n_coords, dtype=CDTYPE)
        coef[torch.arange(len(m)), self.owner[m] * self.n_coords + i] = self.coefficients[m] * self.monomials[m, i]
        return Polynomials(self, dk, coef)

    def check_smooth_at(self, z: torch.Tensor, minor: torch.Tensor, tol: float = 1e-10) -> None:
        """Refuse points where the Jacobian dp/dz has rank < K (singular points of X): z [N, D] in their charts,
        minor [N] the largest |det| of a K x K minor of dp/dz there."""
        scale = float((self.coefficients.abs() * self.monomials.amax(-1)).sum()) ** self.K
        bad = minor < tol * scale
        if bad.any():
            i = int(bad.nonzero()[0])
            raise NotCalabiYauError(
                f"X is singular: dp has rank < {self.K} at a point of X ({int(bad.sum())} of {len(z)} points, "
                f"e.g. z = {z[i].tolist()}); choose parameters for which X is smooth")

    # ------------------------------------------------------------------ topology
    def intersection_number(self, a) -> int:
        """int_X prod_i J_i^{a_i} (sum a_i = dim): the coefficient of prod_i J_i^{n_i} in prod_i J_i^{a_i}
        prod_k (sum_i q_ki J_i), in the cohomology ring of the ambient space (J_i^{n_i + 1} = 0)."""
        a = tuple(int(x) for x in a)
        if len(a) != len(self.dims) or sum(a) != self.dim or min(a) < 0:
            raise ValueError(f"need {len(self.dims)} non-negative powers summing to dim = {self.dim}, got {a}")
        poly = {a: 1}
        for qk in self.configuration:
            new: dict = {}
            for e, c in poly.items():
                for i, q in enumerate(qk):
                    if q:
                        f = e[:i] + (e[i] + 1,) + e[i + 1 :]
                        if f[i] <= self.dims[i]:
                            new[f] = new.get(f, 0) + c * q
            poly = new
        return poly.get(self.dims, 0)

    def euler_number(self) -> int:
        """chi(X) = int_X c_d(X), with c(X) = prod_i (1 + J_i)^{n_i + 1} / prod_k (1 + sum_i q_ki J_i) (adjunction),
        integrated as in :meth:`intersection_number`: the topological value the Gauss-Bonnet integrals are checked
        against."""
        def times(a, b):  # products of polynomials in the J_i, truncated at J_i^{n_i + 1} = 0
            out: dict = {}
            for ea, ca in a.items():
                for eb, cb in b.items():
                    e = tuple(x + y for x, y in zip(ea, eb))
                    if all(x <= n for x, n in zip(e, self.dims)):
                        out[e] = out.get(e, 0) + ca * cb
            return out

        m = len(self.dims)
        unit = tuple([0] * m)
        J = [tuple(int(i == j) for j in range(m)) for i in range(m)]
        c = {unit: 1}
        for i, n in enumerate(self.dims):
            for _ in range(n + 1):
                c = times(c, {unit: 1, J[i]: 1})
        normals = [{J[i]: q for i, q in enumerate(qk) if q} for qk in self.configuration]
        for N in normals:  # 1 / (1 + N) = sum_j (-N)^j
            inverse, power = {unit: 1}, {unit: 1}
            for j in range(1, sum(self.dims) + 1):
                power = times(power, {e: -v for e, v in N.items()})
                inverse = {e: inverse.get(e, 0) + power.get(e, 0) for e in set(inverse) | set(power)}
            c = times(c, inverse)
        top = {e: v for e, v in c.items() if sum(e) == self.dim}
        for N in normals:
            top = times(top, N)
        return top.get(self.dims, 0)

    def volume(self, kahler=None) -> float:
        """int_X J^d for J = sum_i t_i J_i (t = the manifold's moduli unless given): sum over a of
        d! / prod a_i! prod t_i^{a_i} int prod J_i^{a_i}."""
        t = self.kahler if kahler is None else tuple(kahler)
        total = 0.0
        for a in compositions(self.dim, len(self.dims)):
            mult = math.factorial(self.dim) / math.prod(math.factorial(x) for x in a)
            total += mult * math.prod(ti**x for ti, x in zip(t, a)) * self.intersection_number(a)
        return total

    @cached_property
    def sampling_schemes(self) -> tuple[tuple[int, ...], ...]:
        """Every k = (k_1, ..., k_m) (sum k_i = K, k_i <= n_i) whose random linear subspaces, of dimension k_i in
        factor i, meet X: the sampler uses them all, in equal numbers of systems (module sampling), so that the
        points' density is the sum over schemes of prod_i J_i^{n_i - k_i} on X."""
        schemes = tuple(k for k in compositions(self.K, len(self.dims))
                        if all(ki <= n for ki, n in zip(k, self.dims)) and self.intersection_number(_power(self.dims, k)))
        if not schemes:
            raise NotCalabiYauError(f"no linear-subspace sampling scheme meets {self.name}")
        return schemes

    @property
    def sampling_powers(self) -> tuple[tuple[int, ...], ...]:
        """a = (n_i - k_i) of each sampling scheme: its density is prod_i J_i^{a_i} on X."""
        return tuple(_power(self.dims, k) for k in self.sampling_schemes)

    # ------------------------------------------------------------------ identity
    def with_kahler(self, kahler) -> "CompleteIntersection":
        """The same polynomials with other Kaehler moduli t."""
        return CompleteIntersection(self.monomials, self.coefficients, self.name, dict(self.params), self.dims,
                                    self.owner, tuple(kahler))

    def _is_plain_hypersurface(self) -> bool:
        return len(self.dims) == 1 and self.K == 1 and self.kahler == (1.0,)

    def to_dict(self) -> dict:
        d = {"name": self.name, "params": dict(self.params), "monomials": self.monomials.tolist(),
             "coefficients": [[float(c.real), float(c.imag)] for c in self.coefficients]}
        if not self._is_plain_hypersurface():  # a quintic's dict (and fingerprint) stays what it was before CICYs
            d.update(dims=list(self.dims), owner=self.owner.tolist(), kahler=list(self.kahler))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompleteIntersection":
        coeffs = torch.tensor([complex(re, im) for re, im in d["coefficients"]], dtype=CDTYPE)
        return cls(torch.tensor(d["monomials"]), coeffs, d.get("name", "custom"), d.get("params", {}),
                   tuple(d.get("dims", ())), torch.tensor(d["owner"]) if "owner" in d else None,
                   tuple(d.get("kahler", ())))

    def fingerprint(self) -> str:
        """Short hash of the polynomials, factors and moduli, to tell data sets of different manifolds apart."""
        d = self.to_dict()
        d.pop("name"), d.pop("params")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _power(dims, k) -> tuple[int, ...]:
    return tuple(n - ki for n, ki in zip(dims, k))


def compositions(total: int, parts: int):
    """All tuples of `parts` non-negative integers summing to `total` (stars and bars), in increasing order."""
    for cut in itertools.combinations(range(total + parts - 1), parts - 1):
        yield tuple(b - a - 1 for a, b in zip((-1, *cut), (*cut, total + parts - 1)))


class Polynomials:
    """Several polynomials on the ambient space at once. A monomial is a product of one monomial per factor, and
    those are few (10 cubics in 3 variables), so each factor's monomials m_i [S_i] are computed once. With few
    factors the polynomials are a dense coefficient tensor over them, C [outputs, S_1, ..., S_m], contracted factor
    by factor (a matrix product, then products and sums):
        f_o(z) = sum_{s_1..s_m} C[o, s_1, ..., s_m] prod_i m_i[s_i](z);
    when that tensor would be much larger than the list of distinct monomials (many factors: the tetraquadric's
    derivatives), the monomials u_s = prod_i m_i[s_i] are gathered instead and f = C' u, C' [outputs, U]."""

    def __init__(self, X: CompleteIntersection, exponents: torch.Tensor, coefficients: torch.Tensor):
        exponents, inverse = torch.unique(exponents, dim=0, return_inverse=True)  # [U, D]
        coefficients = torch.zeros(len(exponents), coefficients.shape[1], dtype=CDTYPE).index_add(
            0, inverse, coefficients.to(CDTYPE))  # [U, outputs]
        self.factors, index = [], []  # per factor: (coordinates, distinct exponents [S_i, n_i + 1])
        for sl in X.factor_slices:
            sub, which = torch.unique(exponents[:, sl], dim=0, return_inverse=True)
            self.factors.append((sl, sub))
            index.append(which)
        self.terms = len(exponents)
        self.dense = coefficients.shape[1] * math.prod(len(sub) for _, sub in self.factors[:-1]) <= 4 * self.terms
        if self.dense:
            C = torch.zeros(*(len(sub) for _, sub in self.factors), coefficients.shape[1], dtype=CDTYPE)
            C.index_put_(tuple(index), coefficients, accumulate=True)
            self.coefficients = C.movedim(-1, 0).contiguous()  # [outputs, S_1, ..., S_m]
        else:
            self.coefficients, self.index = coefficients.T.contiguous(), index  # [outputs, U], [U] per factor

    def contract(self, C: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
        """f_o = sum_s C[o, s] prod_i parts_i[s_i] for the factors' monomials parts_i [S_i, B]: -> [outputs, B]."""
        if not self.dense:
            u = math.prod(p.index_select(0, i.to(p.device)) for p, i in zip(parts, self.index))  # [U, B]
            return C @ u
        B = parts[-1].shape[-1]
        out = (C.reshape(-1, C.shape[-1]) @ parts[-1]).reshape(*C.shape[:-1], B)
        for part in reversed(parts[:-1]):
            out = (out * part).sum(-2)
        return out

    def parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Each factor's monomials, points last: [B, D] -> [[S_i, B]]."""
        zt = z.T.contiguous()
        return [_powers_product(zt[sl], sub.to(z.device)) for sl, sub in self.factors]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., outputs]."""
        C = self.coefficients.to(z.device)
        return _blocked(lambda zb: self.contract(C, self.parts(zb)).T, z, self.terms)


def _powers_product(zt: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """prod_I z_I^{k_sI}, points last: zt [n, B], k [S, n] -> [S, B].

    Powers come from a table z_I^e, e = 0..max(k), built by repeated multiplication, so that picking the
    factors is a row gather.
    """
    n1, B = zt.shape
    powers = [torch.ones_like(zt)]
    for _ in range(int(k.max())):
        powers.append(powers[-1] * zt)
    table = torch.stack(powers)  # [e, n, B]
    rows = (k * n1 + torch.arange(n1, device=zt.device)).reshape(-1)
    return table.reshape(-1, B).index_select(0, rows).reshape(len(k), n1, B).prod(1)


def _blocked(fn, z: torch.Tensor, terms: int, budget: int = 2**24) -> torch.Tensor:
    """Apply fn to z [..., D] in blocks of points so that blocks hold about budget numbers."""
    flat = z.reshape(-1, z.shape[-1])
    size = max(1, budget // (terms * z.shape[-1]))
    out = torch.cat([fn(flat[i : i + size]) for i in range(0, len(flat), size)]) if len(flat) else fn(flat)
    return out.reshape(*z.shape[:-1], *out.shape[1:])
