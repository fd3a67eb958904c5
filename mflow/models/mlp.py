"""Fully connected networks in standard or NTK parametrisation (float64 parameters; float32 inputs run in float32).

NTK parametrisation (as in neural-tangents): weights W ~ N(0, 1), biases b ~ N(0, 1), and a layer
computes sigma_w W x / sqrt(fan_in) + sigma_b b. Standard parametrisation draws
W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2) and computes W x + b: the same function at
initialisation, different gradient scales (and hence a width-independent NTK only for 'ntk').
"""
from __future__ import annotations

import math

import torch
from torch import nn

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
    """One affine layer in 'ntk' or 'standard' parametrisation: [..., d_in] -> [..., d_out].

    bias=False: a linear layer (its bias a zero buffer, not trained)."""

    def __init__(self, d_in: int, d_out: int, parametrization: str = "standard", sigma_w: float = 1.0, sigma_b: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if parametrization not in ("ntk", "standard"):
            raise ValueError(f"parametrization must be 'ntk' or 'standard', got {parametrization!r}")
        self.parametrization = parametrization
        self.w_scale = sigma_w / math.sqrt(d_in) if parametrization == "ntk" else 1.0
        self.b_scale = sigma_b if parametrization == "ntk" else 1.0
        std_w = 1.0 if parametrization == "ntk" else sigma_w / math.sqrt(d_in)
        std_b = 1.0 if parametrization == "ntk" else sigma_b
        self.weight = nn.Parameter(torch.randn(d_out, d_in, dtype=torch.float64) * std_w)
        if bias:
            self.bias = nn.Parameter(torch.randn(d_out, dtype=torch.float64) * std_b)
        else:
            self.register_buffer("bias", torch.zeros(d_out, dtype=torch.float64))

    def forward(self, x):
        """In the input's precision (float32 inputs: the float64 parameters are cast for the product)."""
        return self.w_scale * (x @ self.weight.T.to(x.dtype)) + self.b_scale * self.bias.to(x.dtype)


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
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [Dense(a, b, parametrization, sigma_w, sigma_b), activation(activation_name)]
        layers.append(Dense(dims[-1], d_out, parametrization, sigma_w, sigma_b))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
