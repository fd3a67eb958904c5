"""A complex-structure family's points (data.psi_range, dwork or two_cubics): its settings checked, its members, the
sets sampled on them, and each point's member, psi and kappa. The one rule of CYDataModule and of
mflow.evaluation.checkpoints.recorded_splits (which regenerates a family network's points from its checkpoint's
record, never through a datamodule)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from mflow.geometry.cicy import CompleteIntersection
from mflow.geometry.points import CYPoints, _apply, cat_points
from mflow.geometry.presets import check_psi_range, psi_member
from mflow.geometry import volume
from mflow.geometry.volume import kappa, real_det

PSI_MEMBERS = 8  # members of a psi family (data.psi_range) the points are sampled on


def check_family(psi_range, manifold: str, psi, kahler_range, path) -> tuple[list[float] | None, float | None]:
    """(psi_range, psi) of CYDataModule's settings: psi_range as [lo, hi] with lo < hi clear of the family's singular
    members (mflow.geometry.presets.check_psi_range), no kahler_range or path; psi, the reference member, in it
    (None: mid-range). (None, psi) without psi_range."""
    if psi_range is None:
        return None, psi
    try:
        lo, hi = (float(v) for v in psi_range)
    except (TypeError, ValueError):
        raise ValueError(f"psi_range={psi_range!r}: give [lo, hi], e.g. [1.2, 2.0]") from None
    lo, hi = check_psi_range(manifold, (lo, hi))
    if kahler_range is not None or path is not None:
        raise ValueError("data.psi_range samples its own members at t fixed: unset data.kahler_range and data.path")
    if psi is None:
        return [lo, hi], (lo + hi) / 2
    if not lo <= float(psi) <= hi:  # the datamodule cannot tell a typed psi from a config's: name both
        raise ValueError(f"data.psi={psi} (the reference member; conf/{manifold}.yaml sets it when "
                         f"--data.manifold={manifold} picks that config, as may any --config) is outside "
                         f"psi_range={[lo, hi]}: pass --data.psi=<a value in the range>")
    return [lo, hi], psi


def member_psi(psi_range) -> torch.Tensor:
    """The psi of a family's members: [PSI_MEMBERS] float64, evenly spaced over psi_range = [lo, hi]."""
    return torch.linspace(*psi_range, PSI_MEMBERS, dtype=torch.float64)


def member_sets(surface: CompleteIntersection, psi_range, n_points: int, seed: int
                ) -> list[tuple[CompleteIntersection, int, int]]:
    """(member, n, seed) of each set sampled: PSI_MEMBERS members at member_psi, n_points shared out (the first
    n_points % PSI_MEMBERS one more), seeds seed * PSI_MEMBERS + k."""
    q, r = divmod(n_points, PSI_MEMBERS)
    return [(psi_member(surface, float(psi)), q + (k < r), seed * PSI_MEMBERS + k)
            for k, psi in enumerate(member_psi(psi_range))]


def join_members(parts: list[CYPoints]) -> tuple[CYPoints, torch.Tensor]:
    """The members' sets one after another (their sampling systems numbered apart) and each point's member [N]."""
    member = torch.cat([torch.full((len(p),), k) for k, p in enumerate(parts)])
    return (parts[0] if len(parts) == 1 else cat_points(parts)), member


def family_columns(train: CYPoints, member: torch.Tensor, rows: dict[str, torch.Tensor], psi_range,
                   n_points: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per split (rows: its indices into the joined points, member [N]: each one's member; train: the train rows'
    points) each point's psi and kappa: its member's, kappa by eq. B.10 on that member's train points. ValueError
    when a member has no train points."""
    members = {s: member[i] for s, i in rows.items()}
    tr = train
    kappas = torch.stack([kappa(tr.weights[i], real_det(tr.g_fs[i]), tr.omega_sq[i])
                          for i in (members["train"] == k for k in range(PSI_MEMBERS))])
    if not torch.isfinite(kappas).all():
        raise ValueError(f"n_points={n_points} leaves a psi member without train points: use more points")
    psi = member_psi(psi_range)
    return {s: {"psi": psi[m], "kappa": kappas[m]} for s, m in members.items()}


@dataclass
class FamilyPoints(CYPoints):
    """Points of a psi family with each point's member psi [N] and kappa [N] (family_columns): batches (as_batch)
    carry them, so that a module's measure compares every point with its own member (as the datamodule's batches
    do); slicing and moving keep them."""

    psi: torch.Tensor | None = None
    kappa: torch.Tensor | None = None

    @classmethod
    def of(cls, points: CYPoints, columns: dict[str, torch.Tensor]) -> "FamilyPoints":
        return cls(**{k: getattr(points, k) for k in CYPoints.__dataclass_fields__}, **columns)

    def __getitem__(self, idx) -> "FamilyPoints":
        return FamilyPoints(**{f.name: _apply(getattr(self, f.name), lambda t: t[idx]) for f in fields(self)})

    def to(self, device) -> "FamilyPoints":
        return FamilyPoints(**{f.name: _apply(getattr(self, f.name), lambda t: t.to(device)) for f in fields(self)})

    def sigma(self, g: torch.Tensor | None = None) -> torch.Tensor:
        """sigma of g (g_FS when None), each point against its own member's kappa (eq. B.11)."""
        g = self.g_fs if g is None else g
        dev = g.device
        return volume.sigma(self.weights.to(dev), real_det(g) / self.kappa.to(dev), self.omega_sq.to(dev))
