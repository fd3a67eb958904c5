"""Metric models: a network plus a head that turns its outputs into g_ab on X (docs/conventions.md section 7).

Every model is a metric function ``model(z, patch, elim) -> g [N, d, d]`` of homogeneous
points z [N, D] (scaled to their charts) in fixed charts, differentiable in z, so curvature and the
Kaehler, transition and Ricci losses apply to any head. The pullback J(z) is recomputed from
z (so derivatives along X see it change), never read from a cache.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..geometry import charts
from ..geometry.forms import hermitian, scatter_upper
from ..geometry.cicy import CompleteIntersection
from ..geometry.presets import psi_member_gradient, psi_of_points, psi_pencil
from ..geometry.points import features as chart_features
from . import taylor
from .bihomogeneous import BihomogeneousNet
from .dp_features import dp_norm, dp_norm_jets
from .mlp import MLP

from ..choices import FEATURES, HEADS, Activation, Features, Head, Parametrization, Precision, check_choice  # noqa: F401

POTENTIAL_HEADS = ("phifs", "bihomogeneous")  # g = g_FS + d dbar phi: Kaehler by construction


def invariant_features(z: torch.Tensor, slices=None) -> torch.Tensor:
    """C*-invariant features of z: Re and Im of z_i conj(z_j) / |z|^2 for i <= j: [N, n+1] -> [N, (n+1)^2]; in a
    product, those of every factor (slices: the factors' coordinates), concatenated: [N, sum (n_i+1)^2].

    A function of these is a function on the ambient space, whatever chart z is written in.
    """
    if slices is not None and len(slices) > 1:
        return torch.cat([invariant_features(z[:, s]) for s in slices], -1)
    n1 = z.shape[-1]
    P = z[:, :, None] * z.conj()[:, None, :] / (z.abs() ** 2).sum(-1)[:, None, None]
    iu = torch.triu_indices(n1, n1, device=z.device)
    diag = iu[0] == iu[1]
    vals = P[:, iu[0], iu[1]]
    return torch.cat([vals.real, vals[:, ~diag].imag], -1)


def cholesky_metric(v: torch.Tensor, m: int) -> torch.Tensor:
    """g = L L^dagger, L lower triangular with exp(v) on the diagonal: positive definite by construction."""
    iu = torch.triu_indices(m, m, offset=1, device=v.device)
    k = iu.shape[1]
    upper = torch.complex(v[:, m : m + k], v[:, m + k : m + 2 * k])
    L = torch.diag_embed(torch.exp(v[:, :m]).to(torch.complex128)) + scatter_upper(upper, iu, m).conj().transpose(-1, -2)
    return L @ L.conj().transpose(-1, -2)


class MetricModel(nn.Module):
    """g = head(network(features(z))) on a CY manifold X (mflow.geometry.cicy; optionally of its moduli t too, or
    of psi on a psi family: a surface marked by mflow.geometry.presets.psi_family, whose points lie on many members).

    head: free (g = L L^dagger from the net, PD by construction), addfs (g_FS + herm(NN)),
    multfs (g_FS * (1 + herm(NN)) elementwise), matrixfs (g_FS + (g_FS H + H g_FS) / 2),
    phifs (g_FS + d dbar phi pulled back: Kaehler by construction), bihomogeneous (g_FS + d dbar log Q / (D pi),
    Q a positive polynomial network in z_i conj(z_j) / |z|^2 with `depth` square layers of `width`: the model
    family of MLGeometry, mflow.models.bihomogeneous; activation and parametrisation do not apply to it).
    features: chart, invariant, or invariant_dp (the invariant features and the member's own log |dp_k|^2_FS, one per
    equation, mflow.models.dp_features; phifs only) (default: chart; the bihomogeneous head needs and defaults to
    invariant).
    out_scale multiplies the network output (the rescaling trick of eq. 2.15 with constant h),
    so that at initialisation g stays close to g_FS (bihomogeneous: the size of the noise on its
    near-identity initial weights).
    precision: of the network's arithmetic (float32 halves its cost; its parameters, the geometry, g and the losses
    stay float64). moduli_input: the network sees the moduli too: t [N, m], or on a psi family the psi of each point's
    member (psi_of_points, a C*-invariant function of z, constant on each member; the pullback J is then that
    member's too). compile: torch.compile the network's part of the training forward (its first call compiles,
    ~15 s per batch shape); evaluation and derivative transforms (the metric-NTK, curvature) run it eagerly.
    """

    def __init__(
        self,
        surface: CompleteIntersection,
        head: Head = "multfs",
        depth: int = 3,
        width: int = 64,
        activation: Activation = "gelu",
        parametrization: Parametrization = "standard",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        features: Features | None = None,
        out_scale: float = 0.01,
        precision: Precision = "float64",
        compile: bool = False,
        moduli_input: bool = False,
    ):
        super().__init__()
        self.dtype = checks.precision("precision", precision)
        check_choice("head", head, Head)
        if head == "phifs" and activation == "relu":
            raise ValueError("phifs with activation relu: d dbar of a piecewise-linear phi vanishes, so g would stay "
                             "g_FS; choose activation gelu, tanh or cos")
        features = features or ("invariant" if head == "bihomogeneous" else "chart")
        check_choice("features", features, Features)
        if head == "bihomogeneous" and features != "invariant":
            raise ValueError("the bihomogeneous head is a polynomial in z_i conj(z_j) / |z|^2: use features: invariant")
        self.surface, self.head, self.features, self.out_scale = surface, head, features, out_scale
        self.m = surface.dim
        sizes = [n + 1 for n in surface.dims]
        self.moduli_input = bool(moduli_input)
        self.pencil = psi_pencil(surface) if "psi_range" in surface.params else None
        if self.pencil is not None and features == "invariant_dp":
            raise ValueError("features: invariant_dp is of one member's dp, not of a psi family's: choose features: "
                             "invariant or chart")
        if head == "bihomogeneous":
            if self.moduli_input:
                raise ValueError("the bihomogeneous head is a polynomial in z: it takes no moduli input; choose another head")
            self.net = BihomogeneousNet(sizes, width, depth, noise=out_scale)
        else:
            d_in = 2 * sum(sizes) if features == "chart" else sum(s * s for s in sizes)
            if features == "invariant_dp":
                if head != "phifs":
                    raise ValueError("features: invariant_dp feeds the phifs head (its jets are closed-form); "
                                     "choose head: phifs or features: invariant / chart")
                d_in += surface.K
                self.register_buffer("dp_scale", _dp_scale(surface))
            d_in += (len(sizes) if self.pencil is None else 1) if self.moduli_input else 0
            d_out = 1 if head == "phifs" else self.m * self.m
            self.net = MLP(d_in, d_out, depth, width, activation, parametrization, sigma_w, sigma_b)
        self.compile = compile
        self._compiled = {}

    def _run(self, name: str, fn, *args):
        """fn(*args), compiled (once per function) if asked, in a training step (training mode, gradients on) outside
        derivative transforms; evaluation sees many batch shapes and grad modes (each would recompile): eager."""
        training_step = self.compile and self.training and torch.is_grad_enabled()
        if not training_step or torch._C._functorch.peek_interpreter_stack() is not None:
            return fn(*args)
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=False)
        return self._compiled[name](*args)

    def __getstate__(self):  # copies and pickles leave compiled functions behind: they compile their own
        state = dict(super().__getstate__())
        state["_compiled"] = {}
        return state

    def inputs(self, z: torch.Tensor, kahler: torch.Tensor | None = None) -> torch.Tensor:
        """The network input at z [N, D]: chart or invariant features (invariant_dp: then the standardised log |dp_k|^2_FS),
        then the moduli t [N, m] if it takes them."""
        u = chart_features(z) if self.features == "chart" else invariant_features(z, self.surface.factor_slices)
        if self.features == "invariant_dp":
            u = torch.cat([u, (dp_norm(self.surface, z) - self.dp_scale[0]) / self.dp_scale[1]], -1)
        if not self.moduli_input:
            return u
        return torch.cat([u, self._moduli(z, kahler)], -1)

    def _moduli(self, z: torch.Tensor, kahler: torch.Tensor | None) -> torch.Tensor:
        """The moduli of each point z [N, D]: t [N, m] (the given ones, or the manifold's own), or on a psi family
        psi [N, 1] (of each point's member)."""
        if self.pencil is not None:
            if kahler is not None:
                raise ValueError("a psi family's network reads psi off the points: it takes no kahler")
            return psi_of_points(self.pencil, z).real[:, None]
        if kahler is None:
            return torch.tensor(self.surface.kahler, dtype=torch.float64, device=z.device).expand(len(z), -1)
        return kahler.to(torch.float64).expand(len(z), -1)

    def network(self, z: torch.Tensor, kahler: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled network output at z: [N, D] -> [N, d_out] (float64; computed in the model's precision)."""
        return self.out_scale * self._run("net", self.net, self.inputs(z, kahler).to(self.dtype)).double()

    def phi(self, z: torch.Tensor, kahler: torch.Tensor | None = None) -> torch.Tensor:
        """Kaehler potential correction phi(z) (potential heads): [N, D] -> [N]."""
        if self.head == "bihomogeneous":
            return self.net.potential(self.inputs(z).to(self.dtype))[:, 0].double()
        return self.network(z, kahler)[:, 0]

    def _potential_jet(self, u: torch.Tensor, du: torch.Tensor, ddu: torch.Tensor):
        """(phi, d phi, d dbar phi) from the features' jets (mflow.models.taylor's layout)."""
        if self.head == "bihomogeneous":
            return self.net.potential_jet(u, du, ddu)
        return tuple(self.out_scale * t for t in taylor.mlp_ddbar(self.net.net, u, du, ddu))

    def ddbar_phi(self, z: torch.Tensor, J: torch.Tensor, kahler: torch.Tensor | None = None) -> torch.Tensor:
        """d_a dbar_b phi along X by Taylor-mode propagation (mflow.models.taylor): -> [N, m, m]."""
        if self.features == "chart":
            jets = taylor.chart_feature_jets(z, J)
        else:
            jets = taylor.product_jets([taylor.invariant_feature_jets(z[:, s], J[..., s]) for s in self.surface.factor_slices])
            if self.features == "invariant_dp":
                u, du, ddu = dp_norm_jets(self.surface, z, J)
                mu, sd = self.dp_scale
                jets = taylor.product_jets([jets, ((u - mu) / sd, du / sd, ddu / sd)])
        if self.moduli_input:  # t is constant along X
            jets = taylor.product_jets([jets, taylor.constant_jets(self._moduli(z, kahler), J.shape[1])])
        u, du, ddu = (t.to(self.dtype) for t in jets)
        _, _, dd = self._run("ddbar", self._potential_jet, u, du, ddu)
        return taylor.hermitian_from_pairs(dd.double(), self.m)[..., 0]

    def forward(self, z: torch.Tensor, patch: torch.Tensor, elim: torch.Tensor, J: torch.Tensor | None = None,
                g_fs: torch.Tensor | None = None, kahler: torch.Tensor | None = None) -> torch.Tensor:
        """g at points z [N, D] in charts (patch, elim) [N]: -> [N, m, m]. J (the pullback) and g_fs may be
        given when g is not differentiated in z (a point set's stored geometry saves recomputing it).
        kahler [N, m] (or [m]): the moduli t of each point, for a model of a family (moduli_input; g_FS is then
        that of J = sum t_i J_i); None: the manifold's own t."""
        if J is None:
            dp = self.surface.gradient(z) if self.pencil is None else psi_member_gradient(self.pencil, z)
            J = charts.pullback(self.surface, dp, patch, elim)
        if g_fs is None:
            if kahler is None:
                g_fs = charts.pull_back(J, charts.fs_metric(self.surface, z))
            else:
                gs = charts.factor_metrics(self.surface, z, J)
                g_fs = charts.kahler_metric(gs, self._moduli(z, kahler))
        if self.head in POTENTIAL_HEADS:
            return g_fs + self.ddbar_phi(z, J, kahler)
        v = self.network(z, kahler)
        if self.head == "free":
            return cholesky_metric(v, self.m)
        H = hermitian(v, self.m)
        if self.head == "addfs":
            return g_fs + H
        if self.head == "multfs":
            return g_fs * (1 + H)
        return g_fs + (g_fs @ H + H @ g_fs) / 2  # matrixfs


def _dp_scale(surface: CompleteIntersection, n: int = 4096) -> torch.Tensor:
    """Mean and standard deviation of log |dp_k|^2_FS over n seeded Gaussian points of the ambient space: [2, K], so
    that the invariant_dp feature enters the network at unit scale whatever the size of the coefficients."""
    gen = torch.Generator().manual_seed(0)
    z = torch.view_as_complex(torch.randn(n, surface.n_coords, 2, generator=gen, dtype=torch.float64))
    u = dp_norm(surface, z)
    return torch.stack([u.mean(0), u.std(0).clamp_min(1e-6)])
