"""The random-feature cosine net of eq. 2.32, whose NTK tends to a normalised Gaussian (eq. 2.35-2.37)."""
from __future__ import annotations

import math

import torch
from torch import nn

from mflow.checks import positive


def normalising_amplitude(sigma_w: float, d: int) -> float:
    """A with (A^2/2) * integral of exp(-sigma_w^2 |x|^2/(2d)) d^dx = 1: A = sqrt(2) (sigma_w^2/(2 pi d))^(d/4).

    The paper's eq. 2.36 prints 2^(1/4) (sigma_w/sqrt(2 pi d))^(d/4), which is the square root of
    this value (its A^2 equals our A); with it the kernel would not integrate to 1. We use the value
    that makes eq. 2.35 the normalised Gaussian of width sqrt(d)/sigma_w stated in eq. 2.37.
    """
    sigma_w = positive("sigma_w", sigma_w)
    return math.sqrt(2.0) * (sigma_w**2 / (2 * math.pi * d)) ** (d / 4)


class CosineNet(nn.Module):
    """Random-feature cosine net (eq. 2.32): phi(x) = A/sqrt(N) sum_i a_i cos(w_i . x + b_i), [..., d] -> [...].

    a ~ N(0, sigma_a^2) is the only trainable parameter (w ~ N(0, sigma_w^2/d), b ~ U(-pi, pi) are
    frozen buffers), so its empirical NTK is eq. 2.33 and tends to :class:`CosineNTK` (eq. 2.35) as
    N -> infinity. Note: eq. 2.32 as printed puts the sum over j outside the cosine; that form's NTK
    is a sum of 1-d Gaussians plus cross terms, not eq. 2.35. The inner product w_i . x (random
    Fourier features) is what gives eq. 2.35, and is what we implement (identical for d = 1).
    """

    def __init__(self, d: int, width: int, sigma_w: float = 1.0, sigma_a: float = 1.0,
                 amplitude: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if d < 1 or width < 1:
            raise ValueError(f"d and width must be >= 1, got d={d}, width={width}")
        sigma_w, sigma_a = positive("sigma_w", sigma_w), positive("sigma_a", sigma_a)
        self.amplitude = normalising_amplitude(sigma_w, d) if amplitude is None else positive("amplitude", amplitude)
        self.width = width
        g = generator
        self.a = nn.Parameter(sigma_a * torch.randn(width, dtype=torch.float64, generator=g))
        self.register_buffer("w", sigma_w / math.sqrt(d) * torch.randn(width, d, dtype=torch.float64, generator=g))
        self.register_buffer("b", (2 * torch.rand(width, dtype=torch.float64, generator=g) - 1) * math.pi)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """d phi / d a_i = A/sqrt(N) cos(w_i . x + b_i): [..., d] -> [..., N]."""
        return self.amplitude / math.sqrt(self.width) * torch.cos(x @ self.w.T + self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.a
