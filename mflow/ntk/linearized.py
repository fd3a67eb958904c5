"""The linearised metric model: first-order Taylor expansion in the parameters at initialisation (eq. 2.10).

  g^L(x; theta) = g(x; theta_0) + (theta - theta_0)_I dg(x)/dtheta_I |_(theta_0)

computed with one forward-mode product (torch.func.jvp) per call, no Jacobian. Its metric-NTK is
the model's NTK at initialisation for every theta (eq. 2.11): training it is the frozen-kernel
flow (eq. 2.12) of the finite network's own empirical kernel.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp

# attributes of the wrapped model that do not depend on theta (used by losses, callbacks, the module)
FORWARDED = ("surface", "head", "m", "features", "out_scale")


def _key(name: str) -> str:
    """ParameterDict keys cannot contain '.': 'net.net.0.weight' -> 'net__net__0__weight'."""
    return name.replace(".", "__")


class LinearizedModel(nn.Module):
    """g^L(theta) = g(theta_0) + J(theta_0) (theta - theta_0) (eq. 2.10), with the wrapped model's call signature.

    ``LinearizedModel(model)(z, patch, elim) -> g [N, m, m]``. Trainable parameters: theta
    (``self.theta``, a ParameterDict starting at theta_0); theta_0 is frozen as buffers of a private
    copy of the model (``self.base``: the model's trainable parameters turned into buffers, so its
    state_dict keys stay 'base.<name>'). Parameters the model had frozen stay frozen and are not
    linearised. Attributes such as surface, head, m are read from the wrapped model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        surface = getattr(model, "surface", None)  # shared, not copied (it is not a parameter)
        base = copy.deepcopy(model, memo={} if surface is None else {id(surface): surface})
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self._names:
            raise ValueError("the model has no trainable parameters to linearise")
        for name in self._names:
            owner, leaf = _owner(base, name)
            theta0 = getattr(owner, leaf).detach().clone()
            del owner._parameters[leaf]
            owner.register_buffer(leaf, theta0)
        self.base = base
        self.theta = nn.ParameterDict({_key(n): nn.Parameter(base.get_buffer(n).detach().clone()) for n in self._names})

    def __getattr__(self, name):
        if name in FORWARDED:
            return getattr(self._modules["base"], name)
        return super().__getattr__(name)

    def theta0(self) -> dict[str, torch.Tensor]:
        """theta_0 (frozen): {name: tensor}."""
        return {n: self.base.get_buffer(n) for n in self._names}

    def current(self) -> dict[str, torch.Tensor]:
        """theta (trainable): {name: parameter}."""
        return {n: self.theta[_key(n)] for n in self._names}

    def displacement(self) -> torch.Tensor:
        """|theta - theta_0| (Euclidean norm over all linearised parameters)."""
        t0, t = self.theta0(), self.current()
        return torch.sqrt(sum(((t[n] - t0[n]) ** 2).sum() for n in self._names))

    def forward(self, z: torch.Tensor, patch: torch.Tensor, elim: torch.Tensor, *geometry, **options) -> torch.Tensor:
        """g^L at points z [N, D] in charts (patch, elim) [N]: -> [N, m, m] (eq. 2.10); geometry, options: what the
        wrapped model's forward takes besides (e.g. the stored pullback and g_FS, the moduli)."""
        t0, t = self.theta0(), self.current()
        delta = {n: t[n] - t0[n] for n in self._names}
        g0, dg = jvp(lambda p: functional_call(self.base, p, (z, patch, elim, *geometry), options), (t0,), (delta,))
        return g0 + dg


def source_name(name: str) -> str:
    """The name, in the wrapped model, of a LinearizedModel parameter: 'theta.net__net__0__weight' ->
    'base.net.net.0.weight' (where the wrapped model's layer, e.g. its muP learning-rate multipliers, is found)."""
    return "base." + name[len("theta."):].replace("__", ".") if name.startswith("theta.") else name


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    return module, leaf
