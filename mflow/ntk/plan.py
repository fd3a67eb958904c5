"""Planning an empirical-NTK computation: block sizes and a memory estimate, refused before anything runs."""
from __future__ import annotations

import math
from dataclasses import dataclass

from mflow.checks import integer
from mflow.choices import NTKKind, NTKMethod, check_choice

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB

JACOBIAN_BLOCK_BYTES = 512 * 1024**2  # at most this much of J per point block (auto block size)

VP_PAIRS = 2**16  # auto sizes for 'vp': (columns in a chunk) x (rows in a block) <= this

F64 = 8


class NTKTooLarge(ValueError):
    """The requested kernel would need more memory than allowed (raised before anything is computed)."""

    def __init__(self, needed_bytes: int, limit_bytes: int, detail: str):
        self.needed_bytes, self.limit_bytes = int(needed_bytes), int(limit_bytes)
        super().__init__(
            f"the empirical metric-NTK would need about {human_size(needed_bytes)} ({detail}), more than the "
            f"limit of {human_size(limit_bytes)}: use kind='trace' or 'diagonal', fewer points or a smaller "
            "block, or raise max_bytes"
        )

def human_size(b: float) -> str:
    for unit, k in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if b >= k:
            return f"{b / k:.3g} {unit}"
    return f"{int(b)} B"

@dataclass(frozen=True)
class Plan:
    """Sizes and the memory estimate of one kernel computation (bytes, float64)."""

    method: str
    kind: str
    n_a: int
    n_b: int
    components: int
    parameters: int
    block: int  # points per block: Jacobian ('jacobian'), output tile ('structured'), jvp rows ('vp')
    chunk: int  # columns' points per vjp ('vp'); 0 for 'jacobian'
    parameter_groups: tuple  # tuples of parameter names contracted together
    output_bytes: int
    work_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.output_bytes + self.work_bytes

    @property
    def output_shape(self) -> tuple:
        C = self.components
        return {"full": (self.n_a, self.n_b, C, C), "diagonal": (self.n_a, self.n_b, C), "trace": (self.n_a, self.n_b)}[self.kind]

def check_kind_method(kind: NTKKind, method: NTKMethod) -> None:
    check_choice("kind", kind, NTKKind)
    check_choice("method", method, NTKMethod)


def _positive_int(name, v):
    if v is not None:
        integer(name, v)

def plan(
    params: dict,
    n_a: int,
    n_b: int,
    components: int,
    kind: str = "full",
    method: str = "jacobian",
    block: int | None = None,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    layer_sizes: list[tuple[int, int]] | None = None,
) -> Plan:
    """Block sizes and memory estimate (bytes); raises :class:`NTKTooLarge` when it exceeds max_bytes.

    'structured': output + the layer inputs and deltas of both point sets + three output tiles of
    block x block points (block: all points unless the tiles would pass 512 MiB); needs layer_sizes
    [(in, out)] of the dense layers.
    'jacobian': output + three Jacobian blocks [block, C, P_group] (the two being contracted and
    the one being filled) + one output tile. Blocks default to the most points whose Jacobian fits
    in min(512 MiB, a third of what the output leaves); the parameters are split into groups
    (whole tensors) only when not even 32 points fit.
    'vp': output + one chunk of cotangents [chunk C, P] + the tangent outputs [chunk C, block, C];
    the jvp's activations (chunk C x block x the hidden widths, not counted) are kept in check by
    chunk x block <= 2^16 / C by default.
    """
    check_kind_method(kind, method)
    if method == "auto":
        raise ValueError("plan needs a concrete method: structured, jacobian or vp")
    _positive_int("block", block)
    _positive_int("chunk", chunk)
    C = components
    sizes = {k: v.numel() for k, v in params.items()}
    P = sum(sizes.values())
    if P == 0:
        raise ValueError("the model has no trainable parameters: its NTK is zero")
    per_pair = {"full": C * C, "diagonal": C, "trace": 1}[kind]
    out_bytes = n_a * n_b * per_pair * F64
    free = max_bytes - out_bytes
    shape = [n_a, n_b] + ([C, C] if kind == "full" else [C] if kind == "diagonal" else [])
    if free <= 0:
        raise NTKTooLarge(out_bytes, max_bytes, f"the output {shape} alone is {human_size(out_bytes)}")
    groups: list[tuple] = [tuple(params)]
    chunk_out = 0
    n_max = max(n_a, n_b)
    if method == "structured":
        if not layer_sizes:
            raise ValueError("method='structured' needs the dense layers' sizes")
        per_point = sum(i + C * o for i, o in layer_sizes) * F64
        cap = min(JACOBIAN_BLOCK_BYTES, max(free - 2 * n_max * per_point, 0) // 3)
        if block is None:
            block = max(1, min(n_max, math.isqrt(max(cap // (per_pair * F64), 1))))
        work = 2 * n_max * per_point + 3 * block * block * per_pair * F64
        detail = f"output {shape} {human_size(out_bytes)} + layer inputs and deltas + three [{block}, {block}] tiles"
    elif method == "jacobian":
        cap = min(JACOBIAN_BLOCK_BYTES, free // 3)
        if block is None:
            block = int(min(n_max, max(1, cap // (C * P * F64))))
            if block < min(32, n_max):  # split the parameters instead of shrinking the blocks further
                block = min(32, n_max)
                groups = _group(sizes, cap // (C * block * F64))
        p_max = max(sum(sizes[k] for k in g) for g in groups)
        work = 3 * C * block * p_max * F64 + 2 * block * block * per_pair * F64
        detail = f"output {shape} {human_size(out_bytes)} + three Jacobian blocks [{block}, {C}, {p_max}] {human_size(3 * C * block * p_max * F64)}"
    else:
        chunk = max(1, min(n_b, 16)) if chunk is None else chunk
        if block is None:
            block = max(1, min(n_a, VP_PAIRS // (chunk * C)))
        chunk_out = chunk
        work = chunk * C * P * F64 + 2 * chunk * C * block * C * F64 + block * block * per_pair * F64
        detail = f"output {shape} {human_size(out_bytes)} + cotangent chunk [{chunk * C}, {P}] and tangent outputs"
    p = Plan(method, kind, n_a, n_b, C, P, int(block), chunk_out, tuple(groups), out_bytes, int(work))
    if p.total_bytes > max_bytes:
        raise NTKTooLarge(p.total_bytes, max_bytes, detail)
    return p

def _group(sizes: dict, per_group: int) -> list[tuple]:
    """Whole parameter tensors packed greedily into groups of at most per_group numbers."""
    groups, cur, n = [], [], 0
    for k, s in sizes.items():
        if cur and n + s > per_group:
            groups.append(tuple(cur))
            cur, n = [], 0
        cur.append(k)
        n += s
    groups.append(tuple(cur))
    return groups
