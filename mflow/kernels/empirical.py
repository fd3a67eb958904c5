"""The empirical NTK of a finite network, frozen at initialisation, as a kernel of the frozen flow (eq. 2.7, 2.12)."""
from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap

from ..checks import integer, positive
from ..models.mlp import MLP
from .analytic import Kernel


class EmpiricalNTK(Kernel):
    """k(x, x') = sum_I df(x)/dtheta_I df(x')/dtheta_I at theta_0 for a scalar MLP f on the features [Re z, Im z].

    With one such network per metric component (eq. 2.19-2.23) the metric-NTK is delta_ik delta_jl k: the
    frozen metric-NTK of a finite-width network. The network (mflow.models.mlp.MLP: depth hidden layers of
    the given width, activation, parametrisation, sigma_w, sigma_b) is drawn from ``seed`` when the first
    points arrive (its input width is theirs), so the kernel is a fixed function. For ReLU in NTK
    parametrisation it tends to ReluNTK(depth, sigma_w, sigma_b) as width -> infinity. Memory per
    [block, block] tile: two [block, P] Jacobians (P parameters).
    """

    def __init__(self, depth: int = 1, width: int = 512, activation: str = "relu", parametrization: str = "ntk",
                 sigma_w: float = 1.0, sigma_b: float = 0.0, seed: int = 0):
        integer("depth", depth)
        integer("width", width)
        self.depth, self.width, self.activation, self.parametrization = depth, width, activation, parametrization
        self.sigma_w = positive("sigma_w", sigma_w)
        self.sigma_b = positive("sigma_b", sigma_b, allow_zero=True)
        self.seed = int(seed)
        self._nets: dict[int, MLP] = {}
        self.network(1)  # refuse a bad activation or parametrisation now

    def __repr__(self):
        return (f"EmpiricalNTK(depth={self.depth}, width={self.width}, activation={self.activation!r}, "
                f"parametrization={self.parametrization!r}, sigma_w={self.sigma_w}, sigma_b={self.sigma_b}, seed={self.seed})")

    def network(self, d_in: int) -> MLP:
        """The frozen network for inputs of width d_in (drawn from the seed once)."""
        if d_in not in self._nets:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                net = MLP(d_in, 1, self.depth, self.width, self.activation, self.parametrization, self.sigma_w, self.sigma_b)
            self._nets[d_in] = net.requires_grad_(False)
        return self._nets[d_in]

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """df(x)/dtheta at theta_0 for features x [N, D]: -> [N, P]."""
        net = self.network(x.shape[1])
        params = dict(net.named_parameters())

        def f(p, xi):
            return functional_call(net, p, (xi[None],))[0, 0]

        jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
        return torch.cat([j.reshape(len(x), -1) for j in jac.values()], 1)

    def _block(self, xa, xb):
        return self.jacobian(xa) @ self.jacobian(xb).T
