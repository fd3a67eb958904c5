"""Frozen (infinite-width or hand-made) scalar kernels behind one interface (paper sec. 2.3, 3.2).

Every kernel here is a scalar k(x_a, x_b); the metric-NTK it stands for is
Theta_ijkl(x_a, x_b) = delta_ik delta_jl k(x_a, x_b) (eq. 2.23), so the frozen flow (eq. 2.12)
dg_ij(x_a)/dt = -sum_b k(x_a, x_b) dl/dg_ij(x_b) is ``kernel.apply(x, x_train, dl_dg)`` with
dl_dg of shape [N_train, n-1, n-1] (any trailing shape works, real or complex).

Inputs. A point set ``x`` is any of
  * an object with a ``.z`` attribute (``mflow.geometry.points.CYPoints``),
  * a complex tensor z [N, n+1] (homogeneous coordinates),
  * a real tensor [N, D] of features. For points of P^n these are [Re z, Im z] (D = 2(n+1), the
    network input of docs/conventions.md section 2); a kernel that needs z rebuilds z = f[:, :D/2] + i f[:, D/2:].
Each kernel says which view it uses (``uses = "features"`` for the NTKs, ``"z"`` for the
FS-distance kernels) and converts with :func:`as_features` / :func:`as_z`, so the same CYPoints can
be handed to every kernel. Outputs are float64.

Products. The FS-distance kernels (GaussianFS, DeltaKernel) take ``space``: the manifold X (a
CompleteIntersection) whose points they compare, and then use its distance sqrt(sum_i t_i d_i^2) on
P^{n_1} x ... x P^{n_m} (mflow.geometry.distance). space=None, or one P^n with t = 1, is the plain FS distance.

Memory. ``matrix`` and ``apply`` loop over [block, block] tiles: ``apply`` never holds more than one
tile, so k @ v at 100k points costs O(block^2) memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from mflow.checks import integer, positive
from mflow.geometry.distance import NEAR, embed, factors, fs_distance, fs_distance_block, nearest_neighbours
from mflow.geometry.points import as_features, as_z, raw_points
from mflow.models.cosine import normalising_amplitude


DEFAULT_BLOCK = 1024
NEAR_FLOAT32 = 0.05  # float32 tiles of FS-distance kernels: pairs with 1 - |<u, v>| below this are recomputed exactly


def _rhs(v: torch.Tensor, nb: int) -> torch.Tensor:
    v = torch.as_tensor(v)
    if v.ndim == 0 or v.shape[0] != nb:
        raise ValueError(f"v must have leading dimension N_b = {nb}, got shape {tuple(v.shape)}")
    return v.to(torch.complex128 if v.is_complex() else torch.float64)


# ----------------------------------------------------------------------------- base class
class Kernel:
    """A scalar kernel k(x_a, x_b) as [Na, Nb] float64 blocks (metric-NTK = delta delta k, eq. 2.23).

    Subclasses implement ``_block(pa, pb)`` on prepared inputs (``prepare(x)``: features or z).
    """

    uses: str = "features"  # which view of the points: "features" or "z"

    def prepare(self, x) -> torch.Tensor:
        """The view this kernel works on: features [N, D] float64 or z [N, n+1] complex128."""
        return as_z(x) if self.uses == "z" else as_features(x)

    def _block(self, pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def block(self, xa, xb) -> torch.Tensor:
        """k(x_a, x_b) in one piece: [Na, Nb] float64 (small inputs only)."""
        return self._block(self.prepare(xa), self.prepare(xb))

    __call__ = block

    def _tiles(self, pa: torch.Tensor, pb: torch.Tensor, block: int):
        for i in range(0, len(pa), block):
            for j in range(0, len(pb), block):
                yield i, j, self._block(pa[i : i + block], pb[j : j + block])

    def matrix(self, xa, xb=None, block: int = DEFAULT_BLOCK) -> torch.Tensor:
        """Full kernel matrix [Na, Nb] (xb defaults to xa), assembled from [block, block] tiles."""
        integer("block", block)
        pa = self.prepare(xa)
        pb = pa if xb is None else self.prepare(xb)
        out = torch.empty(len(pa), len(pb), dtype=torch.float64)
        for i, j, k in self._tiles(pa, pb, block):
            out[i : i + k.shape[0], j : j + k.shape[1]] = k
        return out

    def apply(self, xa, xb, v: torch.Tensor, block: int = DEFAULT_BLOCK, dtype: torch.dtype = torch.float64,
              device=None) -> torch.Tensor:
        """sum_b k(x_a, x_b) v_b: v [Nb, ...] -> [Na, ...], matrix-free: one [block, block] tile at a time is formed,
        multiplied and dropped (memory O(block^2), never Na x Nb).

        dtype: of the tiles and their products (float32 halves the work; the sums over tiles are float64);
        device: where the tiles are computed (default: the points'), e.g. CUDA; the result is on the points' device.
        With v = dl/dg [Nb, n-1, n-1] this is minus the frozen flow's right-hand side (eq. 2.12, 2.23).
        """
        integer("block", block)
        pa, pb = self.prepare(xa), self.prepare(xb)
        v = _rhs(v, len(pb))
        flat = v.reshape(len(v), -1)
        if v.is_complex():  # k is real: act on (Re, Im) pairs with one real product
            flat = torch.view_as_real(flat).reshape(len(v), -1)
        home, dev = pa.device, torch.device(device) if device is not None else pa.device
        out = self._apply_real(pa.to(dev), pb.to(dev), flat.to(dev, dtype), block, dtype).to(home)
        if v.is_complex():
            out = torch.view_as_complex(out.reshape(len(pa), -1, 2))
        return out.reshape(len(pa), *v.shape[1:])

    def _apply_real(self, pa, pb, V, block: int, dtype: torch.dtype) -> torch.Tensor:
        """sum_b k(a, b) V_b for a real V [Nb, C] (already of the tiles' dtype and device): -> [Na, C] float64."""
        out = torch.zeros(len(pa), V.shape[1], dtype=torch.float64, device=pa.device)
        for i, j, k in self._tiles(pa, pb, block):
            out[i : i + k.shape[0]] += (k.to(dtype) @ V[j : j + k.shape[1]]).double()
        return out


# ----------------------------------------------------------------------------- ReLU NTK
@dataclass(frozen=True)
class ReluNTK(Kernel):
    """Infinite-width NTK of ``MLP(d_in, 1, depth, width, 'relu', 'ntk', sigma_w, sigma_b)``.

    neural-tangents convention (docs/conventions.md section 8): S0 = x.x'/d_in, T0 = 0; per dense layer
    S <- sw^2 S + sb^2, T <- S + sw^2 T; per ReLU (c = arccos(S12/sqrt(S11 S22)))
    S <- sqrt(S11 S22)(sin c + (pi - c) cos c)/(2 pi), T <- T (pi - c)/(2 pi); ``depth`` hidden
    layers, then the dense read-out. Inputs: real features [N, d_in].
    """

    depth: int = 1
    sigma_w: float = 1.0
    sigma_b: float = 0.0

    def __post_init__(self):
        integer("depth", self.depth)
        object.__setattr__(self, "sigma_w", positive("sigma_w", self.sigma_w))
        object.__setattr__(self, "sigma_b", positive("sigma_b", self.sigma_b, allow_zero=True))

    def _block(self, xa, xb):
        d = xa.shape[1]
        if xb.shape[1] != d:
            raise ValueError(f"feature widths differ: {d} vs {xb.shape[1]}")
        sw2, sb2, two_pi = self.sigma_w**2, self.sigma_b**2, 2 * math.pi
        # first dense layer on S0 = x.x'/d_in; T = S
        s11 = sw2 * (xa * xa).sum(1) / d + sb2  # [Na]
        s22 = sw2 * (xb * xb).sum(1) / d + sb2  # [Nb]
        s12 = (xa @ xb.T).mul_(sw2 / d).add_(sb2)  # [Na, Nb]
        t = s12.clone()
        tiny = torch.finfo(s12.dtype).tiny
        for _ in range(self.depth):  # ReLU, then the next dense layer (in place: 3 temporaries)
            norm = torch.outer(s11.sqrt(), s22.sqrt()).clamp_(min=tiny)  # S11 = 0 forces S12 = 0
            cos = s12.div_(norm).clamp_(-1.0, 1.0)
            c = torch.arccos(cos)
            sin = torch.sin(c)
            pmc = c.neg_().add_(math.pi)  # pi - c
            t.mul_(pmc)  # T Sdot, Sdot = (pi - c)/(2 pi); the 1/(2 pi) is folded in below
            s12 = cos.mul_(pmc).add_(sin).mul_(norm)  # 2 pi * arc-cosine S12
            s12.mul_(sw2 / two_pi).add_(sb2)  # dense: S <- sw^2 S + sb^2
            t.mul_(sw2 / two_pi).add_(s12)  # dense: T <- S + sw^2 T
            s11, s22 = sw2 * s11 / 2 + sb2, sw2 * s22 / 2 + sb2
        return t


# ----------------------------------------------------------------------------- cosine net
@dataclass(frozen=True)
class CosineNTK(Kernel):
    """eq. 2.35: (A^2/2) exp(-sigma_w^2 |x - x'|^2 / (2d)), the large-N NTK of :class:`CosineNet` w.r.t. a.

    ``amplitude=None`` takes A from :func:`normalising_amplitude` (eq. 2.36, corrected), making k a
    normalised Gaussian of width sqrt(d)/sigma_w (eq. 2.37). Inputs: real features [N, d].
    """

    sigma_w: float = 1.0
    d: int = 1
    amplitude: float | None = None

    def __post_init__(self):
        integer("d", self.d)
        object.__setattr__(self, "sigma_w", positive("sigma_w", self.sigma_w))
        a = normalising_amplitude(self.sigma_w, self.d) if self.amplitude is None else positive("amplitude", self.amplitude)
        object.__setattr__(self, "amplitude", a)

    @property
    def width(self) -> float:
        """Gaussian width sigma = sqrt(d)/sigma_w (eq. 2.37)."""
        return math.sqrt(self.d) / self.sigma_w

    def _block(self, xa, xb):
        if xa.shape[1] != self.d or xb.shape[1] != self.d:
            raise ValueError(f"CosineNTK(d={self.d}) got inputs of width {xa.shape[1]} and {xb.shape[1]}")
        sq = torch.cdist(xa, xb, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        return self.amplitude**2 / 2 * torch.exp(-(self.sigma_w**2) * sq / (2 * self.d))


# ----------------------------------------------------------------------------- FS-distance kernels
def metric_key(space) -> tuple | None:
    """What of ``space`` the distance depends on: None (plain FS distance) or (dims, kahler)."""
    return None if factors(space) is None else (tuple(space.dims), tuple(space.kahler))


class FSDistanceKernel(Kernel):
    """A kernel of the distance on ``space`` (None: one P^n, the FS distance; module doc, "Products")."""

    uses = "z"
    space = None

    def prepare(self, x) -> torch.Tensor:
        z = as_z(x)
        fac = factors(self.space, z)  # refuses another number of coordinates
        if fac is not None and len(fac) > 1:
            for sl, _ in fac:
                if (torch.linalg.vector_norm(z[:, sl], dim=-1) == 0).any():
                    raise ValueError(f"a factor of z is 0: not a point of {self.space.ambient}")
        return z


@dataclass(frozen=True)
class GaussianFS(FSDistanceKernel):
    """eq. 3.5: exp(-d_FS(x, x') / (2 sigma)); ``squared=True``: exp(-d_FS^2 / (2 sigma^2)).

    ``inverse=True`` reads sigma as an inverse width: exp(-sigma d_FS / 2) (exp(-sigma^2 d_FS^2 / 2) if
    squared). Table 1's sigma = 30 is only a usable kernel read this way (conf/kernel_gaussian.yaml):
    as printed, exp(-d / 60) lies in [0.974, 1] for every pair (d <= pi/2), an almost constant kernel
    that cannot fit the train points (docs/kernel_flows.md).

    d_FS is the FS geodesic distance (eq. 3.2, mflow.geometry.distance: exact at d = 0, so no
    threshold is needed; ``zero_below`` reproduces the paper's cut-off of eq. 3.4 if wanted).
    space: the manifold the points lie on; on a product P^{n_1} x ... x P^{n_m} d_FS is replaced by the product
    distance sqrt(sum t_i d_i^2) in all of the above (None: one P^n with t = 1). Kernels compare equal when their
    parameters and the space's factors and moduli agree (``metric``: (dims, kahler), None for the plain FS distance).
    Inputs: z (CYPoints, complex z, or [Re z, Im z]).
    """

    sigma: float = 1.0
    squared: bool = False
    zero_below: float = 0.0
    inverse: bool = False
    space: object = field(default=None, compare=False, repr=False)
    metric: tuple | None = field(default=None, init=False, repr=False)

    def __repr__(self):
        plain = (f"GaussianFS(sigma={self.sigma!r}, squared={self.squared!r}, zero_below={self.zero_below!r}, "
                 f"inverse={self.inverse!r}")
        return plain + (")" if self.metric is None else f", dims={self.metric[0]}, kahler={self.metric[1]})")

    def __post_init__(self):
        object.__setattr__(self, "metric", metric_key(self.space))
        object.__setattr__(self, "sigma", positive("sigma", self.sigma))
        object.__setattr__(self, "zero_below", positive("zero_below", self.zero_below, allow_zero=True))

    def _of_distance(self, d: torch.Tensor) -> torch.Tensor:
        """k as a function of d, in place: [..] -> [..]."""
        if self.zero_below > 0:
            d.masked_fill_(d < self.zero_below, 0.0)
        width = 1 / self.sigma if self.inverse else self.sigma
        if self.squared:
            return d.square_().mul_(-1 / (2 * width**2)).exp_()
        return d.mul_(-1 / (2 * width)).exp_()

    def _block(self, za, zb):
        return self._of_distance(fs_distance_block(za, zb, self.space))

    def _apply_real(self, za, zb, V, block: int, dtype: torch.dtype) -> torch.Tensor:
        """The matrix-free sum for the FS-distance kernel: per tile, cos^2 d of all pairs from one real matrix
        product of the embeddings u u^H (mflow.geometry.distance.embed), then d and k in place, then k @ V.
        arccos of cos^2 d loses half the digits near d = 0 (eq. 3.4): the close pairs, 1 - |<u, v>| below NEAR
        (float64) or NEAR_FLOAT32 (float32, d < ~0.3), are recomputed exactly (as in fs_distance_block), which keeps
        float64 at round-off and float32 within 1e-6 of it. Products: see :meth:`_apply_product`."""
        if factors(self.space, za) is not None:
            return self._apply_product(za, zb, V, block, dtype)
        Ea, Eb = embed(za).to(dtype), embed(zb).to(dtype)
        near = (1 - (NEAR if dtype == torch.float64 else NEAR_FLOAT32)) ** 2
        out = torch.zeros(len(za), V.shape[1], dtype=torch.float64, device=za.device)
        for i in range(0, len(za), block):
            for j in range(0, len(zb), block):
                c = Ea[i : i + block] @ Eb[j : j + block].T  # cos^2 d
                fix = (c > near).nonzero()
                k = self._of_distance(c.clamp_(0.0, 1.0).sqrt_().arccos_())
                if len(fix):
                    a, b = fix[:, 0] + i, fix[:, 1] + j
                    k[fix[:, 0], fix[:, 1]] = self._of_distance(fs_distance(za[a], zb[b])).to(dtype)
                out[i : i + block] += (k @ V[j : j + block]).double()
        return out

    def _apply_product(self, za, zb, V, block: int, dtype: torch.dtype) -> torch.Tensor:
        """_apply_real on a product: per factor c_i = cos^2 d_i from the factor's embeddings (one real product each),
        D^2 = sum t_i arccos(sqrt c_i)^2. Its round-off is absolute, ~ sum t_i eps (arccos(sqrt c)^2 ~ 1 - c near 0),
        whatever the single d_i, so only pairs with small D lose digits: those with sum t_i (1 - c_i) below
        (1 - near) sum t_i, near as for one P^n (the same pairs as there for one factor), are recomputed exactly
        with fs_distance."""
        fac = factors(self.space, za)
        Ea = [embed(za[:, sl]).to(dtype) for sl, _ in fac]
        Eb = [embed(zb[:, sl]).to(dtype) for sl, _ in fac]
        cut = (1 - (1 - (NEAR if dtype == torch.float64 else NEAR_FLOAT32)) ** 2) * sum(t for _, t in fac)
        out = torch.zeros(len(za), V.shape[1], dtype=torch.float64, device=za.device)
        for i in range(0, len(za), block):
            for j in range(0, len(zb), block):
                d2 = lin = None
                for (_, t), ea, eb in zip(fac, Ea, Eb):
                    c = (ea[i : i + block] @ eb[j : j + block].T).clamp_(0.0, 1.0)  # cos^2 d_i
                    lin = (1 - c) * t if lin is None else lin.add_(1 - c, alpha=t)
                    di2 = c.sqrt_().arccos_().square_().mul_(t)
                    d2 = di2 if d2 is None else d2.add_(di2)
                fix = (lin < cut).nonzero()
                k = self._of_distance(d2.sqrt_())
                if len(fix):
                    a, b = fix[:, 0] + i, fix[:, 1] + j
                    k[fix[:, 0], fix[:, 1]] = self._of_distance(fs_distance(za[a], zb[b], self.space)).to(dtype)
                out[i : i + block] += (k @ V[j : j + block]).double()
        return out


class DeltaKernel(FSDistanceKernel):
    """k(x_a, x_b) = 1 if x_b is the FS-nearest point of {x_b} to x_a, else 0 (docs/conventions.md section 8).

    Not symmetric: rows are query (test) points, columns are train points, and each row has exactly
    one 1, so ``apply(x_test, x_train, v) = v[nearest]``: a test point takes the update of its
    nearest train point. On the train set itself (xa = xb) it is the identity (each point is its own
    nearest neighbour; exact duplicates go to the first copy). The nearest point is always taken
    over all of xb, so ``matrix`` / ``apply`` do not depend on ``block``. Inputs: z.
    space: the manifold of the points; on a product the nearest point under sqrt(sum t_i d_i^2) (exact).
    """

    def __init__(self, space=None):
        self.space = space

    def __repr__(self):
        key = metric_key(self.space)
        return "DeltaKernel()" if key is None else f"DeltaKernel(dims={key[0]}, kahler={key[1]})"

    def _nearest(self, za, zb):
        return nearest_neighbours(za, zb, self.space)[1]

    def _block(self, za, zb):
        idx = self._nearest(za, zb)
        out = torch.zeros(len(za), len(zb), dtype=torch.float64)
        out[torch.arange(len(za)), idx] = 1.0
        return out

    def matrix(self, xa, xb=None, block: int = DEFAULT_BLOCK) -> torch.Tensor:
        integer("block", block)
        za = self.prepare(xa)
        zb = za if xb is None else self.prepare(xb)
        return self._block(za, zb)

    def apply(self, xa, xb, v, block: int = DEFAULT_BLOCK, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """v of each x_a's nearest x_b, exactly (no tiles: dtype and device do not apply)."""
        integer("block", block)
        za, zb = self.prepare(xa), self.prepare(xb)
        return _rhs(v, len(zb))[self._nearest(za, zb)]


# ----------------------------------------------------------------------------- rescaling trick
class Scaled(Kernel):
    """Rescaling trick (eq. 2.15-2.16): phi~ = h phi has kernel h(x) h(x') k(x, x').

    ``h`` maps a point set (whatever the caller passes: CYPoints or tensor) to [N] real values,
    e.g. det(g)^(-1/4) for the volume factor of eq. 2.28. Works around any kernel, DeltaKernel too.
    """

    def __init__(self, kernel: Kernel, h: Callable[[object], torch.Tensor]):
        if not isinstance(kernel, Kernel):
            raise ValueError(f"Scaled needs a Kernel, got {type(kernel).__name__}")
        if not callable(h):
            raise ValueError("h must be callable: points -> [N] tensor")
        self.kernel, self.h = kernel, h

    def __repr__(self):
        return f"Scaled({self.kernel!r}, h={getattr(self.h, '__name__', self.h)!r})"

    def _h(self, x) -> torch.Tensor:
        n = len(raw_points(x))
        h = torch.as_tensor(self.h(x)).to(torch.float64).reshape(-1)
        if h.shape != (n,) or not torch.isfinite(h).all():
            raise ValueError(f"h(x) must be {n} finite values, got shape {tuple(h.shape)}")
        return h

    def block(self, xa, xb):
        return self._h(xa)[:, None] * self.kernel.block(xa, xb) * self._h(xb)[None, :]

    __call__ = block

    def matrix(self, xa, xb=None, block: int = DEFAULT_BLOCK):
        hb = self._h(xa if xb is None else xb)
        return self._h(xa)[:, None] * self.kernel.matrix(xa, xb, block) * hb[None, :]

    def apply(self, xa, xb, v, block: int = DEFAULT_BLOCK, dtype: torch.dtype = torch.float64, device=None):
        hb = self._h(xb)
        v = _rhs(v, len(hb))
        shape = (-1,) + (1,) * (v.ndim - 1)
        out = self.kernel.apply(xa, xb, hb.reshape(shape) * v, block, dtype, device)
        return self._h(xa).reshape(shape) * out
