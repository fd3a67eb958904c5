"""The member's own invariant as a network feature: log |dp_k|^2_FS, one per equation p_k (issue 21 item 1).

The C*-invariant features (mflow.models.metric.invariant_features) are the same for every member of a family: a
network on them has to build the member's polynomials out of them. For the Fermat quintic the size of dp that the
Monge-Ampere equation turns into the metric's correction is a simple symmetric function of the diagonal features
(|dp|^2 ~ sum_i |z_i|^8); for a generic member it is a random polynomial of degree 2 (q - 1) in them. This module
gives the network that function directly:

    N_k(z) = sum_i |z_i|^2 sum_{I in factor i} |d_I p_k(z)|^2 / prod_j |z_j|^(2 q_kj),

a function on the ambient space (homogeneous of degree 0 in every factor), and u_k = log N_k. Its jets along X
(value, d_a, d_a dbar_b; mflow.models.taylor's layout) are closed-form, from the holomorphic Hessian of p: with
h_I = d_I p_k, G_i = sum_{I in i} |h_I|^2, r_i = |z_i|^2 and F_k = sum_i r_i G_i,
    d_a h_I = (J H_k)_aI,  d_a G_i = sum_{I in i} d_a h_I conj(h_I),  d_a dbar_b G_i = sum_{I in i} d_a h_I conj(d_b h_I),
    d_a r_i = sum_{L in i} J_aL conj(z_L),  d_a dbar_b r_i = sum_{L in i} J_aL conj(J_bL),
and u_k = log F_k - sum_j q_kj log r_j (log jets: taylor.log_jet).
"""
from __future__ import annotations

import torch

from ..geometry.charts import factor_norms_sq
from ..geometry.cicy import CDTYPE, CompleteIntersection, Polynomials
from . import taylor


def _hessian_polys(X: CompleteIntersection) -> Polynomials:
    """d_I d_J p_k as polynomials, one output per (k, I, J): [..., D] -> [..., K * D * D] (built once per manifold)."""
    cached = X.__dict__.get("_dp_hessian")
    if cached is None:
        cached = _build_hessian_polys(X)
        object.__setattr__(X, "_dp_hessian", cached)
    return cached


def _build_hessian_polys(X: CompleteIntersection) -> Polynomials:
    D, K = X.n_coords, X.K
    exps, rows, cols = [], [], []
    for m in range(len(X.monomials)):
        k = X.monomials[m]
        for I in range(D):
            for J in range(D):
                c = int(k[I]) * (int(k[J]) - (I == J))
                if c:
                    e = k.clone()
                    e[I] -= 1
                    e[J] -= 1
                    exps.append(e)
                    rows.append((m, c))
                    cols.append(int(X.owner[m]) * D * D + I * D + J)
    coef = torch.zeros(len(exps), K * D * D, dtype=CDTYPE)
    for r, ((m, c), col) in enumerate(zip(rows, cols)):
        coef[r, col] = X.coefficients[m] * c
    return Polynomials(X, torch.stack(exps), coef)


def dp_norm(X: CompleteIntersection, z: torch.Tensor) -> torch.Tensor:
    """u_k = log N_k(z) of the module doc: [N, D] -> [N, K]."""
    r, G = factor_norms_sq(X, z), factor_norms_sq(X, X.gradient(z))  # [N, m], [N, K, m]
    q = torch.tensor(X.configuration, dtype=torch.float64, device=z.device)  # [K, m]
    return torch.log((G * r[:, None, :]).sum(-1)) - torch.log(r) @ q.T


def dp_norm_jets(X: CompleteIntersection, z: torch.Tensor, J: torch.Tensor):
    """Jets of u = dp_norm along X: z [N, D], J [N, m, D] -> u [N, K], du [2, N, m, K], ddu [2, N, P, K]."""
    N, D, K, nf = len(z), X.n_coords, X.K, len(X.dims)
    a, b = taylor.pairs(J.shape[1], z.device)
    f = X.factor_of.to(z.device)
    onehot = (f[:, None] == torch.arange(nf, device=z.device)).to(CDTYPE)  # [D, m]: sums over each factor
    h = X.gradient(z)  # [N, K, D]
    H = _hessian_polys(X)(z).reshape(N, K, D, D)
    dh = torch.einsum("naJ,nkJI->nkaI", J, H)  # d_a h_I [N, K, m, D]
    G = factor_norms_sq(X, h)  # [N, K, nf]
    dG = (dh * h.conj()[:, :, None, :]).to(CDTYPE) @ onehot  # [N, K, m, nf]
    ddG = (dh[:, :, a] * dh.conj()[:, :, b]) @ onehot  # [N, K, P, nf]
    r = factor_norms_sq(X, z)  # [N, nf]
    dr = (J * z.conj()[:, None, :]) @ onehot  # [N, m, nf]
    ddr = (J[:, a] * J.conj()[:, b]) @ onehot  # [N, P, nf]
    F = (r[:, None] * G).sum(-1)  # [N, K]
    dF = (dr[:, None] * G[:, :, None] + r[:, None, None] * dG).sum(-1)  # [N, K, m]
    ddF = (ddr[:, None] * G[:, :, None] + dr[:, None, a] * dG.conj()[:, :, b] + dG[:, :, a] * dr.conj()[:, None, b]
           + r[:, None, None] * ddG).sum(-1)  # [N, K, P]

    def st(c):
        return torch.stack([c.real, c.imag])

    uF, duF, dduF = taylor.log_jet(F, st(dF.transpose(1, 2)), st(ddF.transpose(1, 2)))  # log F_k
    ur, dur, ddur = taylor.log_jet(r, st(dr), st(ddr))  # log r_j
    q = torch.tensor(X.configuration, dtype=torch.float64, device=z.device).T  # [nf, K]
    return uF - ur @ q, duF - dur @ q, dduF - ddur @ q
