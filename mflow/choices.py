"""The named choices of mflow's settings, each defined once as a ``Literal`` type.

The constructors that train.py's LightningCLI builds (models, flows, datamodules, kernels, callbacks) annotate their
settings with these types, so that ``python train.py --help`` lists every choice and a bad one is refused by the
parser in one line naming the choices. Direct Python use is checked with :func:`check_choice` (one message for
every such mistake). The tuples (``HEADS`` ...) are the same choices for code that iterates over them; a test holds
each tuple equal to the registry it names (mflow.models.mlp.ACTIVATIONS, mflow.losses.LOSSES, ...).
The PD policies (``PDPolicy``) mean the same in every flow (mflow.flows.base says what).
"""
from __future__ import annotations

from typing import Literal, get_args

Manifold = Literal["fermat_quintic", "fermat_quartic", "fermat_cubic", "dwork", "random", "bicubic", "p1p3",
                   "tetraquadric", "two_cubics"]
Population = Literal["all_charts", "one_chart"]
Head = Literal["free", "addfs", "multfs", "matrixfs", "phifs", "bihomogeneous"]
Features = Literal["chart", "invariant", "invariant_dp"]
Activation = Literal["relu", "gelu", "tanh", "cos"]
Parametrization = Literal["standard", "ntk", "mup"]
Precision = Literal["float64", "float32"]
Optimizer = Literal["adam", "sgd"]
MetricLoss = Literal["sigma", "ultra_local_square", "ultra_local_entropy", "volume"]  # functions of g alone
LossTerm = Literal["sigma", "ultra_local_square", "ultra_local_entropy", "volume", "kaehler", "transition", "ricci",
                   "two_derivative"]
KernelName = Literal["relu", "cosine", "gaussian", "delta", "empirical", "scaled", "network_ntk"]
ChartMode = Literal["ambient", "transform", "reject"]
Reduction = Literal["mean", "sum"]
PDPolicy = Literal["stop", "continue", "backtrack", "clip"]  # meanings: mflow.flows.base
NetworkPDPolicy = Literal["stop", "continue"]  # a network's optimizer step cannot be undone: no backtrack or clip
NTKKind = Literal["full", "trace", "diagonal"]
NTKMethod = Literal["auto", "structured", "jacobian", "vp"]
Merge = Literal["greedy", "nearest", "hungarian"]  # of the clustered data (mflow.data.clustering)
Linkage = Literal["complete", "average"]

MANIFOLDS: tuple[str, ...] = get_args(Manifold)
POPULATIONS: tuple[str, ...] = get_args(Population)
HEADS: tuple[str, ...] = get_args(Head)
FEATURES: tuple[str, ...] = get_args(Features)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
PARAMETRIZATIONS: tuple[str, ...] = get_args(Parametrization)
PRECISIONS: tuple[str, ...] = get_args(Precision)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
METRIC_LOSSES: tuple[str, ...] = get_args(MetricLoss)
LOSS_TERMS: tuple[str, ...] = get_args(LossTerm)
KERNEL_NAMES: tuple[str, ...] = get_args(KernelName)
CHART_MODES: tuple[str, ...] = get_args(ChartMode)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
PD_POLICIES: tuple[str, ...] = get_args(PDPolicy)
NETWORK_PD_POLICIES: tuple[str, ...] = get_args(NetworkPDPolicy)
NTK_KINDS: tuple[str, ...] = get_args(NTKKind)
NTK_METHODS: tuple[str, ...] = get_args(NTKMethod)
MERGES: tuple[str, ...] = get_args(Merge)
LINKAGES: tuple[str, ...] = get_args(Linkage)


def check_choice(name: str, value, choices) -> str:
    """value if it is one of ``choices`` (a tuple, or a Literal type); else ValueError naming the setting and the
    choices, in one line."""
    options = get_args(choices) or tuple(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


def check_pd_policy(policy: str, flow: str, supported) -> str:
    """policy if ``flow`` can do it; else ValueError in one line (the old network value ``raise`` names ``stop``)."""
    if policy == "raise":
        raise ValueError("pd_policy 'raise' is now called 'stop' (one vocabulary for every flow): use pd_policy=stop")
    if policy not in PD_POLICIES:
        raise ValueError(f"pd_policy must be one of {', '.join(PD_POLICIES)}; got {policy!r}")
    if policy not in supported:
        raise ValueError(f"{flow} cannot do pd_policy={policy}: it takes {' or '.join(supported)}")
    return policy
