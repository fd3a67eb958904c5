"""cymetric's basis.pickle: the manifold description a cymetric user has beside a dataset.npz.

cymetric's point generators pickle a dict with, per polynomial k, ``QB{k}`` (exponents [M_k, D]) and ``QF{k}``
(coefficients [M_k]), ``DQDZB{k}`` / ``DQDZF{k}`` (dp_k/dz_i as exponents [D, T, D] and factors [D, T], zero-padded),
and ``AMBIENT`` (the n_i), ``KMODULI`` (t), ``NFOLD`` (dim X), ``NHYPER`` (K), ``INTNUMS`` (d_{i1..id}, [m]*d) and
``KAPPA``. :func:`write_basis` writes that dict for an mflow manifold (so cymetric's models can run on mflow's
point sets), :func:`read_basis` builds the CompleteIntersection from one and checks its intersection numbers
against mflow's (an independent check of both).
"""
from __future__ import annotations

import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from mflow.geometry.cicy import CDTYPE, CompleteIntersection
from mflow.io import atomic_write


class BasisError(ValueError):
    """A basis.pickle is unreadable or describes no Calabi-Yau complete intersection mflow can use."""


def intersection_tensor(surface: CompleteIntersection) -> np.ndarray:
    """d_{i1..id} = int_X J_i1 ... J_id: [m]*d integers (symmetric)."""
    m, d = len(surface.dims), surface.dim
    out = np.zeros([m] * d, dtype=np.int64)
    for idx in itertools.product(range(m), repeat=d):
        out[idx] = surface.intersection_number(tuple(idx.count(i) for i in range(m)))
    return out


def basis_dict(surface: CompleteIntersection, kappa: float = 1.0) -> dict:
    """The basis dict of cymetric's point generators for this manifold (module doc)."""
    D, out = surface.n_coords, {}
    for k in range(surface.K):
        mons = surface.monomials[surface.owner == k]
        coef = surface.coefficients[surface.owner == k]
        out[f"QB{k}"], out[f"QF{k}"] = mons.numpy().copy(), coef.numpy().copy()
        exps, facs = [], []
        for i in range(D):
            has = mons[:, i] > 0
            e = mons[has].clone()
            e[:, i] -= 1
            exps.append(e)
            facs.append(coef[has] * mons[has, i])
        T = max(len(e) for e in exps)
        B = np.zeros((D, T, D), dtype=np.int64)
        F = np.zeros((D, T), dtype=np.complex128)
        for i, (e, f) in enumerate(zip(exps, facs)):
            B[i, : len(e)], F[i, : len(f)] = e.numpy(), f.numpy()
        out[f"DQDZB{k}"], out[f"DQDZF{k}"] = B, F
    out.update(AMBIENT=np.array(surface.dims), KMODULI=np.array(surface.kahler), NFOLD=surface.dim,
               NHYPER=surface.K, INTNUMS=intersection_tensor(surface), KAPPA=float(kappa))
    return out


def write_basis(path: str | os.PathLike, surface: CompleteIntersection, kappa: float = 1.0) -> Path:
    """basis.pickle for this manifold (cymetric's format), written atomically."""
    data = basis_dict(surface, kappa)

    def w(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)

    return atomic_write(path, w)


def read_basis(path: str | os.PathLike, name: str = "cymetric") -> CompleteIntersection:
    """The manifold of a cymetric basis.pickle (QB/QF, AMBIENT, KMODULI), its INTNUMS and NFOLD checked against
    mflow's. Only open files you trust: pickle runs code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            b = pickle.load(f)
        K = int(b.get("NHYPER", 1))
        mons = [np.asarray(b[f"QB{k}"], dtype=np.int64) for k in range(K)]
        coefs = [np.asarray(b[f"QF{k}"], dtype=np.complex128) for k in range(K)]
        dims = tuple(int(n) for n in np.atleast_1d(b["AMBIENT"]))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise BasisError(f"{path}: not a readable cymetric basis.pickle ({type(e).__name__}: {e})") from None
    kahler = tuple(float(t) for t in np.atleast_1d(b.get("KMODULI", np.ones(len(dims)))))
    X = CompleteIntersection(torch.from_numpy(np.concatenate(mons)), torch.from_numpy(np.concatenate(coefs)).to(CDTYPE),
                             name, {"basis": str(path)}, dims,
                             torch.cat([torch.full((len(m),), k) for k, m in enumerate(mons)]), kahler)
    if "NFOLD" in b and int(b["NFOLD"]) != X.dim:
        raise BasisError(f"{path}: NFOLD = {int(b['NFOLD'])}, but its polynomials in {X.ambient} leave dimension {X.dim}")
    if "INTNUMS" in b and not np.array_equal(np.rint(np.asarray(b["INTNUMS"], dtype=float)), intersection_tensor(X)):
        raise BasisError(f"{path}: its INTNUMS differ from the intersection numbers of its configuration "
                         f"{X.configuration} in {X.ambient}")
    return X
