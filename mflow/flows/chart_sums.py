"""The kernel sum of the frozen flow, sum_x' k(x, x') V(x'), in each receiving point's chart (paper sec. 3.1).

The Kronecker deltas of Theta = delta_ik delta_jl k (eq. 2.23) add metric components at different points, which
only means something in one coordinate system, but every point has its own chart (patch, elim) (sec. 3.1).
Three ways (``chart_mode`` of mflow.flows.kernel.FrozenKernelFlow):

* ``"ambient"`` (default): the metric-NTK of g(x) = g_FS(x) + F(x) A(x) F(x)^H with an ambient Hermitian
  D x D form A whose components (in an orthonormal basis of Hermitian matrices) are independent
  networks of scalar kernel k (mflow.geometry.forms: F F^H = g_FS). Then
  dg(x) = -lr F(x) [sum_x' k(x, x') F(x')^H G(x') F(x')] F(x)^H: chart-independent and exact (in a product too:
  mflow.geometry.forms.ambient_frame fixes every factor's phase), one kernel product on D^2 complex components,
  no Jacobians between far-apart points. At x = x' the deltas
  become the FS metric: dg = -lr k g_FS G g_FS, the covariant form of delta_ik delta_jl.
* ``"transform"``: the paper's component-wise delta_ik delta_jl, with every correction expressed in the
  chart of the receiving point x. Transport rule: the paper's update at x' is the metric correction
  dg(x') = -lr G(x') (eq. 2.12 at x = x', components added in x''s chart); a metric correction is a (1,1)
  form, so it moves to x's chart as forms do, T dg T^H (T the chart Jacobian at x', mflow.geometry.forms),
  for the steps and for predictions alike (the coefficients C are accumulated corrections). A form keeps
  its signature under T (. ) T^H, while the gradient rule T^-H G T^-1 amplifies corrections by |T^-1|^2,
  up to 1e8 between distant quintic points. Predictions can still be non-positive-definite away from the
  train points: they are counted (``FlowModule.measure``, the logs, eval.json).
* ``"reject"``: the paper's choice: only train points in the most common chart of the split take part
  (about 7% of quintic points); updates are added component-wise in that chart, and a prediction at a point
  of another chart is moved to its chart as a form (exact).

Each function takes ``kapply(tz, sz, V, K)``, the flow's component product sum_s k(t, s) V_s on Hermitian V
[Ns, d, d] (K [Nt, Ns] the kernel matrix if known, else None), targets and sources as dicts of z [N, D],
patch, elim [N], pullback [N, d, D], and V [Ns, d, d] in the sources' charts; it returns [Nt, d, d]
in the targets' charts.
"""
from __future__ import annotations

import torch

from mflow.geometry.charts import chart_id, chart_of_id
from mflow.geometry.forms import (
    ambient_frame,
    chart_change,
    form_from_ambient,
    form_to_chart,
    gradient_to_ambient,
    hermitian_part,
)


def ambient_sum(kapply, surface, tgt: dict, src: dict, V: torch.Tensor, K) -> torch.Tensor:
    """F(x) [sum_x' k(x, x') F(x')^H V(x') F(x')] F(x)^H: the sum in the ambient frame (F F^H = g_FS)."""
    H = hermitian_part(gradient_to_ambient(ambient_frame(surface, src["z"], src["pullback"]), V))
    S = kapply(tgt["z"], src["z"], H, K)
    return hermitian_part(form_from_ambient(ambient_frame(surface, tgt["z"], tgt["pullback"]), S))


def transform_sum(kapply, surface, tgt: dict, src: dict, V: torch.Tensor, K) -> torch.Tensor:
    """Component-wise sum with every source's V moved to the receiving chart as a form, T V T^H."""
    cid, src_cid = chart_id(surface, tgt["patch"], tgt["elim"]), chart_id(surface, src["patch"], src["elim"])
    out = torch.empty(len(cid), *V.shape[1:], dtype=torch.complex128)
    for c in torch.unique(cid).tolist():  # one pass per receiving chart (at most (n+1) n of them for one P^n)
        sel = cid == c
        Vc = V.clone()
        move = src_cid != c
        if move.any():
            pc, ec = (torch.full_like(src["patch"][move], int(x)) for x in chart_of_id(surface, c))
            T = chart_change(surface, src["z"][move], src["patch"][move], src["elim"][move], pc, ec)
            Vc[move] = hermitian_part(form_to_chart(T, V[move]))
        out[sel] = kapply(tgt["z"][sel], src["z"], Vc, None if K is None else K[sel])
    return hermitian_part(out)


def reject_sum(kapply, surface, ref_chart: tuple[int, int], tgt: dict, src: dict, V: torch.Tensor, K) -> torch.Tensor:
    """Component-wise sum in the reference chart (patch, elim) that all sources share; targets in another chart
    receive it moved there as a form."""
    S = kapply(tgt["z"], src["z"], V, K)
    pr, er = ref_chart
    other = (tgt["patch"] != pr) | (tgt["elim"] != er)
    if other.any():
        po, eo = tgt["patch"][other], tgt["elim"][other]
        T = chart_change(surface, tgt["z"][other], torch.full_like(po, pr), torch.full_like(eo, er), po, eo)
        S[other] = form_to_chart(T, S[other])
    return hermitian_part(S)
