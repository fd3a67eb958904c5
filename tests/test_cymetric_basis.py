"""cymetric's basis.pickle: written for mflow's manifolds, read back, and its fields mean what cymetric means."""
import pickle

import numpy as np
import pytest
import torch

from mflow.data.cymetric import BasisError, read_basis, write_basis
from mflow.geometry.points import sample
from mflow.geometry.presets import manifold


@pytest.mark.parametrize("X", [manifold("bicubic", kahler=(1.0, 2.0)), manifold("two_cubics", psi=0.5),
                               manifold("fermat_quintic")], ids=lambda X: X.name)
def test_round_trip_and_the_fields_evaluate_p_and_dp(tmp_path, X):
    path = write_basis(tmp_path / "basis.pickle", X, kappa=0.5)
    Y = read_basis(path)
    assert Y.fingerprint() == X.fingerprint() and Y.kahler == X.kahler
    with open(path, "rb") as f:
        b = pickle.load(f)
    assert b["NFOLD"] == 3 and b["NHYPER"] == X.K and list(b["AMBIENT"]) == list(X.dims) and b["KAPPA"] == 0.5
    z = sample(X, 50, seed=1).z.numpy()
    for k in range(X.K):  # p_k and dp_k/dz_i from the pickled monomials and factors, as cymetric evaluates them
        p = (b[f"QF{k}"] * np.prod(z[:, None, :] ** b[f"QB{k}"][None], -1)).sum(-1)
        assert np.abs(p).max() < 1e-10
        dp = (b[f"DQDZF{k}"][None] * np.prod(z[:, None, None, :] ** b[f"DQDZB{k}"][None], -1)).sum(-1)
        assert np.allclose(dp, X.gradient(torch.from_numpy(z))[:, k].numpy(), atol=1e-10)


def test_a_basis_that_contradicts_itself_is_refused(tmp_path):
    X = manifold("bicubic")
    path = write_basis(tmp_path / "basis.pickle", X)
    with open(path, "rb") as f:
        b = pickle.load(f)
    b["INTNUMS"] = b["INTNUMS"] + 1
    (tmp_path / "bad.pickle").write_bytes(pickle.dumps(b))
    with pytest.raises(BasisError, match="INTNUMS"):
        read_basis(tmp_path / "bad.pickle")
    (tmp_path / "junk.pickle").write_bytes(b"not a pickle")
    with pytest.raises(BasisError, match="not a readable"):
        read_basis(tmp_path / "junk.pickle")
