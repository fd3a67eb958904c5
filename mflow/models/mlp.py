"""Fully connected networks in standard, NTK or maximal-update (muP) parametrisation (float64 parameters; float32
inputs run in float32).

NTK parametrisation (as in neural-tangents): weights W ~ N(0, 1), biases b ~ N(0, 1), and a layer
computes sigma_w W x / sqrt(fan_in) + sigma_b b. Standard parametrisation draws
W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2) and computes W x + b: the same function at
initialisation, different gradient scales (and hence a width-independent NTK only for 'ntk').

muP (Yang & Hu 2021, "Feature Learning in Infinite-Width Neural Networks"; in the form of Yang et al. 2022,
"Tensor Programs V", Table 3 with base shapes): with the width multiplier m = width / MUP_BASE_WIDTH, every layer
is initialised as in standard parametrisation except the read-out's weights (variance m sigma_w^2 / fan_in), the
read-out multiplies its input by 1/m (effective read-out weights of variance ~ 1/fan_in^2), and the learning rate
of each parameter is scaled (``lr_multipliers``):

  parameter                       Adam     SGD
  input-layer weights, biases     1        m
  hidden weights                  1/m      1
  hidden biases                   1        m
  read-out weights                1        m
  read-out bias                   1        1

so that every layer's activations move by O(1) per step at every width (feature learning survives the limit),
where the NTK parametrisation moves them by O(1/sqrt(width)) (lazy training). At the base width muP is the
standard parametrisation.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mflow.choices import PARAMETRIZATIONS

MUP_BASE_WIDTH = 64  # muP equals the standard parametrisation at this width (the shipped networks')

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "cos": None,  # handled below (no torch.nn module)
}


class Cos(nn.Module):
    def forward(self, x):
        return torch.cos(x)


class Square(nn.Module):
    """x -> x^2: keeps a network without biases homogeneous (the bihomogeneous head) and doubles its degree."""

    def forward(self, x):
        return x * x


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return Cos() if name == "cos" else ACTIVATIONS[name]()


class Dense(nn.Module):
    """One affine layer in 'standard', 'ntk' or 'mup' parametrisation: [..., d_in] -> [..., d_out].

    role (input | hidden | output) and width_mult (m = width / MUP_BASE_WIDTH) matter for muP only: the read-out's
    1/m multiplier and every parameter's learning-rate multiplier (``lr_mult[optimizer][name]``).
    bias=False: a linear layer (its bias a zero buffer, not trained)."""

    def __init__(self, d_in: int, d_out: int, parametrization: str = "standard", sigma_w: float = 1.0, sigma_b: float = 0.0,
                 bias: bool = True, role: str = "hidden", width_mult: float = 1.0):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if role not in ("input", "hidden", "output"):
            raise ValueError(f"role must be input, hidden or output, got {role!r}")
        self.parametrization = parametrization
        ntk = parametrization == "ntk"
        readout = parametrization == "mup" and role == "output"
        self.w_scale = sigma_w / math.sqrt(d_in) if ntk else 1.0 / width_mult if readout else 1.0
        self.b_scale = sigma_b if ntk else 1.0
        std_w = 1.0 if ntk else sigma_w * math.sqrt((width_mult if readout else 1.0) / d_in)
        std_b = 1.0 if ntk else sigma_b
        self.weight = nn.Parameter(torch.randn(d_out, d_in, dtype=torch.float64) * std_w)
        if bias:
            self.bias = nn.Parameter(torch.randn(d_out, dtype=torch.float64) * std_b)
        else:
            self.register_buffer("bias", torch.zeros(d_out, dtype=torch.float64))
        self.lr_mult = mup_lr_mult(role, width_mult) if parametrization == "mup" else {}

    def forward(self, x):
        """In the input's precision (float32 inputs: the float64 parameters are cast for the product)."""
        return self.w_scale * (x @ self.weight.T.to(x.dtype)) + self.b_scale * self.bias.to(x.dtype)


def mup_lr_mult(role: str, m: float) -> dict[str, dict[str, float]]:
    """muP's learning-rate multipliers of one layer's weight and bias (the module docstring's table)."""
    if role == "hidden":
        return {"adam": {"weight": 1 / m, "bias": 1.0}, "sgd": {"weight": 1.0, "bias": m}}
    if role == "input":
        return {"adam": {"weight": 1.0, "bias": 1.0}, "sgd": {"weight": m, "bias": m}}
    return {"adam": {"weight": 1.0, "bias": 1.0}, "sgd": {"weight": m, "bias": 1.0}}


def lr_multipliers(model: nn.Module, optimizer: str) -> dict[str, float]:
    """{parameter name: learning-rate multiplier} for the muP layers of ``model`` under ``optimizer`` (adam | sgd);
    parameters not listed keep the base learning rate."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Dense) and module.lr_mult:
            for leaf, mult in module.lr_mult[optimizer].items():
                out[f"{prefix}.{leaf}" if prefix else leaf] = mult
    return out


class MLP(nn.Module):
    """depth hidden layers of the given width, then a linear read-out: [..., d_in] -> [..., d_out].

    For ReLU in NTK parametrisation its infinite-width NTK is mflow.kernels' analytic ReLU NTK.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        depth: int = 3,
        width: int = 64,
        activation_name: str = "gelu",
        parametrization: str = "standard",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
    ):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        dims = [d_in] + [width] * depth
        m = width / MUP_BASE_WIDTH
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            role = "input" if i == 0 else "hidden"
            layers += [Dense(a, b, parametrization, sigma_w, sigma_b, role=role, width_mult=m), activation(activation_name)]
        layers.append(Dense(dims[-1], d_out, parametrization, sigma_w, sigma_b, role="output", width_mult=m))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
