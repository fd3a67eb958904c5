"""Point-set files, cymetric interop, the CLI and the DataModule (mflow.data)."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mflow.data import pointset as ps_mod
from mflow.data.pointset import (
    PointSetError,
    cymetric_arrays,
    is_cymetric_file,
    load_cymetric,
    load_pointset,
    read_metadata,
    sample_pointset,
    save_pointset,
)
from mflow.geometry.presets import manifold
from mflow.geometry.points import sample

FIELDS = ("z", "patch", "elim", "pullback", "omega_sq", "g_fs", "weights")
PY = sys.executable


@pytest.fixture(scope="module")
def pts(quintic):
    return sample(quintic, 1000, seed=3)


@pytest.fixture()
def saved(tmp_path, quintic, pts):
    return save_pointset(tmp_path / "pts.npz", pts, quintic, seed=3)


def _rewrite(path, **changes):
    """Rewrite an npz with some arrays replaced, keeping the rest (including the stored checksum)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


# ----------------------------------------------------------------------------- files
def test_round_trip(saved, quintic, pts):
    loaded = load_pointset(saved, quintic)
    for f in FIELDS:
        a, b = getattr(loaded.points, f), getattr(pts, f)
        assert a.dtype == b.dtype and torch.equal(a, b), f
    m = loaded.metadata
    assert m["format_version"] == ps_mod.FORMAT_VERSION and m["created_by"] == "mflow"
    assert (m["fingerprint"], m["n_coords"], m["seed"], m["n_points"]) == (quintic.fingerprint(), 5, 3, 1000)
    assert loaded.surface.fingerprint() == quintic.fingerprint()
    assert read_metadata(saved) == m
    # without an expected surface the file's own manifold is used
    assert load_pointset(saved).surface.fingerprint() == quintic.fingerprint()


def test_atomic_write_failure_keeps_old_file(tmp_path, quintic, pts, monkeypatch):
    target = save_pointset(tmp_path / "p.npz", pts[:100], quintic, seed=0)
    old = target.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(ps_mod.np, "savez", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        save_pointset(target, pts, quintic, seed=1)
    with pytest.raises(RuntimeError, match="simulated"):
        save_pointset(tmp_path / "new.npz", pts, quintic, seed=1)
    assert target.read_bytes() == old
    assert not (tmp_path / "new.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]  # no temp files left behind
    monkeypatch.undo()
    assert len(load_pointset(target, quintic).points) == 100


def test_killed_writer_leaves_no_partial_file(tmp_path):
    """SIGKILL after the data are written but before the rename: the target never sees a partial file."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads(2)
        from mflow.data import pointset
        from mflow.geometry.presets import manifold
        s = manifold("fermat_quintic")
        P = pointset.sample_pointset(s, 300, 0)
        pointset.save_pointset({str(tmp_path / "old.npz")!r}, P[:10], s, seed=0)
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        pointset.save_pointset({str(tmp_path / "old.npz")!r}, P, s, seed=0)
        """
    )
    r = subprocess.run([PY, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()
    assert len(load_pointset(tmp_path / "old.npz").points) == 10


def test_corrupt_byte(saved):
    raw = bytearray(saved.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the z array
    saved.write_bytes(bytes(raw))
    with pytest.raises(PointSetError, match="corrupt|checksum"):
        load_pointset(saved)


def test_checksum_mismatch(saved):
    with np.load(saved) as f:
        w = f["weights"].copy()
    w[7] *= 1.0001
    _rewrite(saved, weights=w)  # a valid archive whose stored checksum is stale
    with pytest.raises(PointSetError, match="checksum mismatch"):
        load_pointset(saved)


def test_truncated_and_foreign_files(saved, tmp_path):
    raw = saved.read_bytes()
    saved.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PointSetError, match="corrupt|truncated"):
        load_pointset(saved)
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    with pytest.raises(PointSetError, match="not an .npz|corrupt"):
        load_pointset(text)
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(PointSetError, match="not an .npz"):
        load_pointset(tmp_path / "arr.npy")
    with pytest.raises(PointSetError, match="no such file"):
        load_pointset(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(PointSetError, match="missing keys"):
        load_pointset(tmp_path / "other.npz")


def test_wrong_format_version(saved):
    with np.load(saved) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["metadata"][()]))
    meta["format_version"] = 99
    meta_s = json.dumps(meta)
    _rewrite(saved, metadata=np.array(meta_s), checksum=np.array(ps_mod._checksum(arrays, meta_s)))
    with pytest.raises(PointSetError, match="format version 99"):
        load_pointset(saved)


def test_manifold_mismatch(saved, tmp_path, quintic):
    other = manifold("dwork", psi=0.3)
    with pytest.raises(PointSetError, match="manifold mismatch"):
        load_pointset(saved, other)
    # points of another manifold filed under the quintic: the polynomial does not vanish there
    bad = save_pointset(tmp_path / "bad.npz", sample(other, 200, 0), quintic, seed=0)
    with pytest.raises(PointSetError, match="are not on"):
        load_pointset(bad, quintic)


# ----------------------------------------------------------------------------- cymetric
def test_cymetric_keys_consistent(saved, pts):
    with np.load(saved) as f:
        c = {k: f[k] for k in ("X_train", "y_train", "X_val", "y_val")}
    t = int(0.9 * len(pts))
    assert c["X_train"].shape == (t, 10) and c["X_val"].shape == (len(pts) - t, 10)
    assert c["X_train"].dtype == np.float64 and c["y_train"].shape == (t, 2)
    X = np.concatenate([c["X_train"], c["X_val"]])
    y = np.concatenate([c["y_train"], c["y_val"]])
    z = pts.z.numpy()
    np.testing.assert_array_equal(X, np.concatenate([z.real, z.imag], 1))
    np.testing.assert_array_equal(y[:, 0], pts.weights.numpy())
    np.testing.assert_array_equal(y[:, 1], pts.omega_sq.numpy())
    assert is_cymetric_file(saved) is False  # has mflow metadata: read it as a point set


def test_load_cymetric_round_trip(tmp_path, quintic, pts):
    arrays = cymetric_arrays(pts)
    # cymetric normalises weights by its own constant factor: simulate that
    arrays["y_train"][:, 0] *= 3.7
    arrays["y_val"][:, 0] *= 3.7
    f = tmp_path / "dataset.npz"
    np.savez_compressed(f, **arrays)
    assert is_cymetric_file(f)
    P = load_cymetric(f, quintic)
    for k in ("z", "patch", "elim", "pullback", "g_fs", "omega_sq"):
        assert torch.allclose(getattr(P, k), getattr(pts, k), rtol=1e-12, atol=0), k
    assert torch.allclose(P.weights, 3.7 * pts.weights, rtol=1e-12)
    # it also reads the cymetric keys of our own files
    P2 = load_cymetric(save_pointset(tmp_path / "own.npz", pts, quintic), quintic)
    assert torch.equal(P2.z, pts.z) and torch.equal(P2.weights, pts.weights)


def test_load_cymetric_errors(tmp_path, quintic, pts):
    arrays = cymetric_arrays(pts)
    f = tmp_path / "dataset.npz"
    noisy = {k: v.copy() for k, v in arrays.items()}
    noisy["y_train"][::2, 0] *= 1.5
    np.savez(f, **noisy)
    with pytest.raises(PointSetError, match="weights are not proportional"):
        load_cymetric(f, quintic)
    np.savez(f, **arrays)
    with pytest.raises(PointSetError, match="are not on dwork"):
        load_cymetric(f, manifold("dwork", psi=0.5))
    with pytest.raises(PointSetError, match=r"P\^3, which needs \[N, 8\]"):
        load_cymetric(f, manifold("fermat_quartic"))
    np.savez(f, X_train=arrays["X_train"])
    with pytest.raises(PointSetError, match="missing keys"):
        load_cymetric(f, quintic)


# ----------------------------------------------------------------------------- CLI
def test_cli_sample_and_info(tmp_path):
    out = tmp_path / "cli.npz"
    r = subprocess.run(
        [PY, "-m", "mflow.data", "sample", "--manifold", "dwork", "--psi", "0.2", "--n_points", "600", "--seed", "5",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "600 points" in r.stdout and "kappa" in r.stdout and "sigma" in r.stdout
    meta = read_metadata(out)
    assert meta["manifold"]["name"] == "dwork" and meta["seed"] == 5 and meta["n_points"] == 600
    r = subprocess.run([PY, "-m", "mflow.data", "info", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"fingerprint"' in r.stdout and "OK" in r.stdout
    raw = bytearray(out.read_bytes())
    out.write_bytes(bytes(raw[:-100]))
    r = subprocess.run([PY, "-m", "mflow.data", "info", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "INVALID" in r.stderr


def test_cli_help():
    from mflow.data.__main__ import build_parser

    text = build_parser().format_help()
    assert "sample" in text and "info" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--help"])


def test_chunked_sampling(quintic):
    a = sample_pointset(quintic, 250, 4, chunk_size=100)
    b = sample_pointset(quintic, 250, 4, chunk_size=100)
    assert len(a) == 250 and torch.equal(a.z, b.z)
    assert torch.equal(sample_pointset(quintic, 80, 4, chunk_size=100).z, sample(quintic, 80, 4).z)


# ----------------------------------------------------------------------------- DataModule
def _dm(tmp_path, **kw):
    from mflow.data import CYDataModule

    args = dict(n_points=1000, seed=0, batch_size=128, cache_dir=str(tmp_path / "cache"))
    args.update(kw)
    dm = CYDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_splits(tmp_path):
    dm = _dm(tmp_path)
    n = 1000
    sizes = [len(dm.train), len(dm.val), len(dm.test)]
    assert sizes == [800, 100, 100]
    allidx = torch.cat([dm.split_indices[k] for k in ("train", "val", "test")])
    assert torch.equal(allidx.sort().values, torch.arange(n))  # disjoint and covering
    dm2 = _dm(tmp_path)
    for k in ("train", "val", "test"):
        assert torch.equal(dm.split_indices[k], dm2.split_indices[k])
    assert torch.equal(dm.val.z, dm2.val.z)
    dm3 = _dm(tmp_path, seed=1)
    assert not torch.equal(dm3.val.z, dm.val.z)
    assert not torch.equal(dm3.split_indices["val"], dm.split_indices["val"])


def test_datamodule_batches(tmp_path):
    dm = _dm(tmp_path, batch_size=300)
    tl = dm.train_dataloader()
    batches = list(tl)
    assert [len(b["index"]) for b in batches] == [300, 300, 200] and len(tl) == 3
    b = batches[0]
    assert set(b) == {"features", "z", "weights", "omega_sq", "pullback", "g_fs", "patch", "elim", "index"}
    B = 300
    assert b["features"].shape == (B, 10) and b["features"].dtype == torch.float64
    assert b["z"].shape == (B, 5) and b["z"].dtype == torch.complex128
    assert b["pullback"].shape == (B, 3, 5) and b["pullback"].dtype == torch.complex128
    assert b["g_fs"].shape == (B, 3, 3) and b["g_fs"].dtype == torch.complex128
    for k in ("weights", "omega_sq"):
        assert b[k].shape == (B,) and b[k].dtype == torch.float64
    for k in ("patch", "elim", "index"):
        assert b[k].shape == (B,) and b[k].dtype == torch.int64
    assert torch.equal(b["z"], dm.train.z[b["index"]])
    assert torch.equal(b["features"], dm.train.features[b["index"]])
    # train is shuffled (seeded), covering every point once per epoch; val is in order
    seen = torch.cat([x["index"] for x in batches])
    assert torch.equal(seen.sort().values, torch.arange(800)) and not torch.equal(seen, torch.arange(800))
    assert torch.equal(torch.cat([x["index"] for x in dm.train_dataloader()]), seen)
    assert torch.equal(torch.cat([x["index"] for x in dm.val_dataloader()]), torch.arange(100))
    assert sum(len(x["index"]) for x in dm.test_dataloader()) == 100


def test_sharded_samplers():
    from mflow.data import ShardedBatchSampler

    n, world = 103, 4
    val = [ShardedBatchSampler(n, 10, False, 0, world, r) for r in range(world)]
    got = torch.cat([torch.cat(list(s)) for s in val])
    assert torch.equal(got, torch.arange(n))  # every val point exactly once, no padding
    assert [len(s) for s in val] == [len(list(s)) for s in val]
    train = [ShardedBatchSampler(n, 10, True, 7, world, r) for r in range(world)]
    shards = [torch.cat(list(s)) for s in train]
    assert {len(x) for x in shards} == {26} and len({len(s) for s in train}) == 1  # same number of steps
    assert set(torch.cat(shards).tolist()) == set(range(n))
    train[0].set_epoch(1)
    assert not torch.equal(torch.cat(list(train[0])), shards[0])


def test_datamodule_cache_reuse_and_invalid_cache(tmp_path, monkeypatch):
    from mflow.data import datamodule

    dm = _dm(tmp_path)
    cp = dm.cache_path
    assert cp.exists() and cp.parent == tmp_path / "cache"
    mtime = cp.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("resampled although a valid cache exists")

    monkeypatch.setattr(datamodule, "sample_pointset", boom)
    dm2 = _dm(tmp_path)
    assert cp.stat().st_mtime_ns == mtime and torch.equal(dm2.train.z, dm.train.z)
    cp.write_bytes(cp.read_bytes()[:1000])
    with pytest.raises(PointSetError, match=f"; delete {cp} and rerun") as err:
        _dm(tmp_path)
    assert str(err.value).lower().count("delete") == 1  # the remedy is said once


def test_datamodule_loads_files(tmp_path, quintic, pts):
    from mflow.data import CYDataModule

    f = save_pointset(tmp_path / "given.npz", pts, quintic, seed=3)
    dm = CYDataModule(path=str(f), val_fraction=0.2, test_fraction=0.0, batch_size=64)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train), len(dm.val), len(dm.test)) == (800, 200, 0)
    cym = tmp_path / "dataset.npz"
    np.savez(cym, **cymetric_arrays(pts))
    dm = CYDataModule(path=str(cym), batch_size=64)
    dm.setup()
    assert len(dm.train) + len(dm.val) + len(dm.test) == 1000
    with pytest.raises(PointSetError, match="manifold mismatch"):
        CYDataModule(path=str(f), manifold="dwork", psi=0.1).setup()


def test_datamodule_kappa_fs(tmp_path):
    dm = _dm(tmp_path, n_points=4000, val_fraction=0.05, test_fraction=0.05)
    assert dm.kappa_fs == pytest.approx(0.0176, rel=0.05)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(val_fraction=1.2), "val_fraction"),
        (dict(test_fraction=-0.1), "test_fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "leaves no training points"),
        (dict(n_points=5), "n_points=5 is too small"),
        (dict(manifold="torus"), "manifold must be one of"),
        (dict(manifold="dwork", psi=1.0), "singular"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_datamodule_bad_config(kw, match):
    from mflow.data import CYDataModule

    with pytest.raises(ValueError, match=match):
        CYDataModule(**kw)


def test_datamodule_in_lightning(tmp_path):
    """One fit + validate under Lightning: our batch samplers are used as they are (not re-wrapped)."""
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
            self.val_seen = []

        def training_step(self, batch, i):
            return ((batch["features"].sum(-1) - self.w) ** 2).mean()

        def validation_step(self, batch, i):
            self.val_seen.append(batch["index"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    dm = _dm(tmp_path, batch_size=256)
    model = Probe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    assert torch.equal(torch.cat(model.val_seen).sort().values, torch.arange(100))


# ----------------------------------------------------------------------------- populations
def test_one_chart_population_reproduces_eq_3_6():
    """The paper's points are one chart's (sec. 3.1); their mean nearest-neighbour FS distance at N = 1000 is
    eq. 3.6's 0.968 N^-0.184 = 0.2717 within 3% (all charts: ~0.37)."""
    from mflow.data.population import population_chart
    from mflow.geometry.distance import nearest_neighbours

    s = manifold("fermat_quintic")
    means = []
    for seed in range(4):
        p = sample_pointset(s, 1000, seed, population="one_chart")
        assert len(p) == 1000 and {(int(a), int(b)) for a, b in zip(p.patch, p.elim)} == {population_chart(s)}
        means.append(float(nearest_neighbours(p.z)[0].mean()))
    assert abs(sum(means) / len(means) / (0.968 * 1000**-0.184) - 1) < 0.03, means
    all_charts = float(nearest_neighbours(sample_pointset(s, 1000, 0).z)[0].mean())
    assert all_charts > 1.25 * max(means)


def test_one_chart_population_in_the_datamodule_and_the_sampler(tmp_path, monkeypatch):
    from mflow.data import CYDataModule
    from mflow.data import population as pop
    from mflow.data.__main__ import main as data_main

    dm = CYDataModule(n_points=400, population="one_chart", cache_dir=str(tmp_path / "c"), seed=1)
    dm.setup()
    chart = pop.population_chart(dm.surface)
    assert all((int(a), int(b)) == chart for a, b in zip(dm.train.patch, dm.train.elim))
    assert "one_chart" in dm.cache_path.name and read_metadata(dm.cache_path)["population"] == "one_chart"
    out = tmp_path / "one.npz"
    assert data_main(["sample", "--n_points", "300", "--population", "one_chart", "--out", str(out)]) == 0
    with pytest.raises(PointSetError, match="data.population=one_chart"):
        CYDataModule(path=str(out)).setup()
    on_file = CYDataModule(path=str(out), population="one_chart")
    on_file.setup()
    assert len(on_file.train) + len(on_file.val) + len(on_file.test) == 300
    with pytest.raises(ValueError, match="population must be one of"):
        CYDataModule(population="two_charts")
    monkeypatch.setattr(pop, "MAX_OVERSAMPLING", 5)  # a chart with 5% of the points is now too rare
    with pytest.raises(ValueError, match=r"sampled \d+ points on fermat_quintic and kept \d+"):
        sample_pointset(manifold("fermat_quintic"), 400, 3, population="one_chart")
