"""A complex-structure family (data.psi_range): points on their own members, kappa per member, psi as a network
input, singular members refused, train.py and checkpoints (issue 21 item 5)."""
import json
import os

import pytest
import torch
import yaml

from mflow.cli.errors import run
from mflow.cli.train import main as train_main
from mflow.data.datamodule import CYDataModule
from mflow.data.psi_family import PSI_MEMBERS, member_psi
from mflow.data.psi_family import FamilyPoints
from mflow.evaluation import cli as evaluate_cli
from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits, train_points
from mflow.geometry import curvature, volume
from mflow.geometry.points import sample
from mflow.geometry.presets import SINGULAR_PSI, dwork, psi_family, psi_member, psi_pencil, two_cubics
from mflow.models.metric import MetricModel

RANGES = {"dwork": [1.2, 2.0], "two_cubics": [1.2, 1.8]}


@pytest.fixture(scope="module", params=list(RANGES))
def family(request):
    torch.set_num_threads(1)
    dm = CYDataModule(request.param, psi_range=RANGES[request.param], n_points=8 * 1500, cache=False)
    dm.setup()
    return dm


def test_every_point_lies_on_its_own_member(family):
    for s in ("train", "val", "test"):
        b = family.batch_of(s)
        assert set(b["psi"].unique().tolist()) <= set(member_psi(family.psi_range).tolist())
        for psi in b["psi"].unique():
            on = b["psi"] == psi
            assert float(psi_member(family.surface, float(psi)).residual(b["z"][on]).max()) < 1e-12
        others = b["psi"] != member_psi(family.psi_range)[0]  # and not on another member
        assert float(psi_member(family.surface, float(member_psi(family.psi_range)[0])).residual(b["z"][others]).min()) > 1e-6


def test_kappa_per_member_against_that_member_alone(family):
    """Each point's kappa is its member's (eq. B.10 on that member's train points), which agrees with an independent
    Monte Carlo estimate on fresh points of that member alone; across the range it changes."""
    tr, kap = family.batch_of("train"), family.family["train"]["kappa"]
    val = family.batch_of("val")
    for k, psi in enumerate(member_psi(family.psi_range).tolist()):
        on = tr["psi"] == psi
        own = volume.kappa(tr["weights"][on], volume.real_det(tr["g_fs"][on]), tr["omega_sq"][on])
        assert torch.allclose(kap[on], own, rtol=1e-12) and torch.allclose(val["kappa"][val["psi"] == psi], own)
        fresh = sample(psi_member(family.surface, psi), 20_000, 100 + k)
        ref = volume.kappa(fresh.weights, volume.real_det(fresh.g_fs), fresh.omega_sq)
        assert float(own / ref) == pytest.approx(1, abs=0.03), psi
    assert float(kap.max() / kap.min()) > 1.1


def test_the_network_takes_psi_and_the_members_geometry(family):
    model = MetricModel(family.surface, head="phifs", depth=1, width=8, activation="gelu", moduli_input=True,
                        out_scale=1.0)
    b = family.batch_of("val")
    u = model.inputs(b["z"])
    assert torch.allclose(u[:, -1], b["psi"], atol=1e-9)  # psi, read off each point
    other = torch.cat([u[:, :-1], u[:, -1:] + 0.3], -1)
    assert not torch.allclose(model.net(u), model.net(other))  # the output changes with psi
    p = family.val
    stored = model(p.z, p.patch, p.elim, p.pullback, p.g_fs)
    assert torch.allclose(model(p.z, p.patch, p.elim), stored, atol=1e-10)  # J of each point's own member
    flat = MetricModel(family.surface, head="phifs", depth=1, width=8, activation="gelu", moduli_input=True,
                       out_scale=0.0)  # g = g_FS: its Ricci measure on one member is that member's
    psi = float(member_psi(family.psi_range)[-1])
    on = p[b["psi"] == psi][:40]
    ours = curvature.ricci_measure_on(flat, on, family.surface.dim)[0]
    ref = curvature.ricci_measure_on(curvature.fs_metric_fn(psi_member(family.surface, psi)), on, family.surface.dim)[0]
    assert ours == pytest.approx(ref, rel=1e-8)
    with pytest.raises(ValueError, match="invariant_dp"):
        MetricModel(family.surface, head="phifs", activation="gelu", features="invariant_dp", moduli_input=True)


def test_the_singular_members_are_singular():
    """SINGULAR_PSI's members have a point where p = 0 and dp drops rank (dwork: psi^5 = 1 at (1, ..., 1); two
    cubics: psi = 0, +-1), so a range through one is refused in one line naming it."""
    points = {("dwork", 1.0): [1, 1, 1, 1, 1], ("two_cubics", 1.0): [1, 1, 1, 1, 1, 1],
              ("two_cubics", -1.0): [1, 1, 1, -1, -1, -1], ("two_cubics", 0.0): [0, 0, 0, 1, -1, 0]}
    assert set(points) == {(n, s) for n, v in SINGULAR_PSI.items() for s in v}
    for (name, psi), z in points.items():
        z = torch.tensor([z], dtype=torch.complex128)
        Xa, Xb, a, b = psi_pencil(two_cubics(0.5) if name == "two_cubics" else dwork(1.5))
        s = (psi - a) / (b - a)
        assert float((Xa(z) + s * (Xb(z) - Xa(z))).abs().max()) < 1e-12
        dp = Xa.gradient(z) + s * (Xb.gradient(z) - Xa.gradient(z))
        assert int(torch.linalg.matrix_rank(dp[0])) < Xa.K, (name, psi)
        lo, hi = psi - 0.2, psi + 0.3
        with pytest.raises(ValueError, match=f"singular member psi = {psi:g}"):
            CYDataModule(name, psi_range=[lo, hi], n_points=100, cache=False)
    with pytest.raises(ValueError, match="psi families"):
        CYDataModule("bicubic", psi_range=[1.2, 2.0], n_points=100, cache=False)
    with pytest.raises(ValueError, match="kahler_range"):
        CYDataModule("dwork", psi_range=[1.2, 2.0], kahler_range=[[0.5, 2.0]], n_points=100, cache=False)
    with pytest.raises(ValueError, match="outside psi_range"):
        CYDataModule("dwork", psi=3.0, psi_range=[1.2, 2.0], n_points=100, cache=False)


def _train(tmp_path, name, *extra):
    return train_main([f"--run_dir={tmp_path / name}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=800",
                       "--data.batch_size=100", "--wandb=off", "--trainer.max_epochs=1", "--num_threads=1",
                       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                       "--data.manifold=dwork", "--model.head=phifs", "--model.activation=gelu",
                       "--model.features=invariant", "--model.width=8", "--model.depth=1", *extra])


def test_train_py_on_a_psi_family_and_its_checkpoint(tmp_path):
    trainer = _train(tmp_path, "fam", "--data.psi_range=[1.2,2.0]", "--model.moduli_input=true")
    s = json.loads((tmp_path / "fam" / "summary.json").read_text())
    assert s["sigma_final"]["test"] > 0 and s["ricci_measure_val"] > 0 and s["points"]["train"] > 600
    dm, module = trainer.datamodule, trainer.lightning_module
    ck = load_checkpoint(tmp_path / "fam" / "checkpoints" / "last.ckpt")
    assert ck.surface.params["psi_range"] == [1.2, 2.0] and ck.data["psi_range"] == [1.2, 2.0]
    assert ck.hparams["moduli_input"]
    b = dm.batch_of("val")
    assert torch.equal(ck.module.predict_metric(b), module.predict_metric(b))  # the round trip keeps g(x; psi)
    resumed = train_main(["--resume", str(tmp_path / "fam"), "--trainer.max_epochs=2", "--num_threads=1"])
    assert resumed.current_epoch == 2 and resumed.datamodule.psi_range == [1.2, 2.0]
    caches = dm.cache_paths
    assert len(caches) == PSI_MEMBERS and all(c.exists() for c in caches)
    caches[1].write_bytes(caches[0].read_bytes())  # a member's cache holding another member's points: refused
    with pytest.raises(ValueError, match="delete"):
        _train(tmp_path, "again", "--data.psi_range=[1.2,2.0]", "--model.moduli_input=true")
    with pytest.raises(ValueError, match="moduli_input"):
        _train(tmp_path, "bad", "--data.psi_range=[1.2,2.0]", "--data.n_points=8000")
    with pytest.raises(ValueError, match="psi = 1"):
        _train(tmp_path, "singular", "--data.psi_range=[0.9,1.5]", "--model.moduli_input=true")


def test_a_family_checkpoint_regenerates_its_own_points_and_evaluate_py_refuses_it(tmp_path, capsys):
    """recorded_splits regenerates a family network's points on its members (not the reference member's), split as
    the datamodule split them, each with its member's psi and kappa, so that measuring them gives the run's
    summary.json sigma; evaluate.py (whose test and noised points are of one member) refuses it in one line."""
    trainer = _train(tmp_path, "fam", "--data.psi_range=[1.2,2.0]", "--model.moduli_input=true")
    s = json.loads((tmp_path / "fam" / "summary.json").read_text())
    dm = trainer.datamodule
    for c in dm.cache_paths:
        c.unlink()  # regenerated from the record, not read from the member caches
    ckpt = tmp_path / "fam" / "checkpoints" / "last.ckpt"
    ck = load_checkpoint(ckpt)
    splits = recorded_splits(ck)
    for name in ("train", "val", "test"):
        ours, theirs = splits[name], dm.batch_of(name)
        assert isinstance(ours, FamilyPoints) and len(ours) == len(theirs["z"])
        assert float((ours.z - theirs["z"]).abs().max()) <= 1e-12
        assert torch.equal(ours.psi, theirs["psi"]) and torch.allclose(ours.kappa, theirs["kappa"], rtol=1e-12)
        assert ck.module.measure(ours)["sigma"] == pytest.approx(s["sigma_final"][name], rel=1e-9)
        assert ck.module.measure(ours)["sigma_fs"] == pytest.approx(s["sigma_fs"][name], rel=1e-9)
    assert len(set(splits["train"].psi.tolist())) == PSI_MEMBERS
    head = splits["train"][:7]  # slicing keeps each point's member
    assert isinstance(head, FamilyPoints) and torch.equal(head.psi, splits["train"].psi[:7])
    assert torch.equal(train_points(ck).z, splits["train"].z)  # each member's points checked on that member
    out = tmp_path / "ev"
    assert run(evaluate_cli.main, "evaluate.py", ["--ckpt_path", str(ckpt), "--out_dir", str(out), "--quiet",
                                                  "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.psi_range" in err and "recorded_splits" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_psi_from_the_picked_preset_config_outside_psi_range_says_where_it_came_from(tmp_path, capsys):
    """--data.manifold=dwork picks conf/dwork.yaml (data.psi: 1.5): a psi_range without 1.5 is refused in one line
    that names that config and what to type (the datamodule cannot tell a config's psi from a typed one)."""
    assert run(lambda argv: _train(tmp_path, "outside", *argv), "train.py",
               ["--data.psi_range=[1.6,2.0]", "--model.moduli_input=true"]) == 2
    msg = capsys.readouterr().err.strip()
    assert "data.psi=1.5" in msg and "conf/dwork.yaml" in msg and "--data.psi=<a value in the range>" in msg
    assert "outside psi_range=[1.6, 2.0]" in msg and len(msg.splitlines()) == 1
    dm = CYDataModule("dwork", psi_range=[1.6, 2.0], n_points=100, cache=False)  # no psi: mid-range
    assert float(dm.surface.params["psi"][0]) == pytest.approx(1.8)


def test_a_reversed_psi_range_is_refused_and_a_familys_cache_is_per_member(tmp_path):
    """psi_family(X, [2.0, 0.5]) would pass over psi = 1: lo < hi is required; a family has no one cache_path."""
    with pytest.raises(ValueError, match="need lo < hi"):
        psi_family(dwork(1.5), [2.0, 0.5])
    with pytest.raises(ValueError, match="need lo < hi"):
        CYDataModule("dwork", psi_range=[2.0, 1.2], n_points=100, cache=False)
    dm = CYDataModule("dwork", psi_range=[1.2, 2.0], n_points=100, cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="cache_paths"):
        dm.cache_path
    assert len(dm.cache_paths) == PSI_MEMBERS and len(set(dm.cache_paths)) == PSI_MEMBERS


def test_the_psi_study_checks_its_config_and_out_dir_before_training(tmp_path, monkeypatch):
    """studies/moduli.py (psi): a singular grid or single psi, or a single psi outside psi_range, is refused in one
    line naming it before anything trains; so is an --out_dir whose runs were made with other settings; train.yaml
    is written once, not on every call."""
    from studies import moduli

    monkeypatch.setattr(moduli.subprocess, "run", lambda *a, **k: pytest.fail("trained before the checks"))
    base = ["--config", str(moduli.ROOT / "conf" / "studies" / "moduli_psi.yaml"), "--out_dir", str(tmp_path / "m"),
            "--set"]
    bad = {"grid_psi: [1.0, 1.5]": "grid_psi has psi = 1", "single_psi: [1.0]": "single_psi has psi = 1",
           "single_psi: [2.5]": "single_psi=2.5 is outside psi_range", "psi_range: [2.0, 1.2]": "need lo < hi"}
    for entry, msg in bad.items():
        m = {"psi_range": [1.2, 2.0], "single_psi": [1.5], "grid_psi": [1.2, 1.5, 2.5], **yaml.safe_load("{" + entry + "}")}
        with pytest.raises(SystemExit, match=msg) as e:
            moduli.main([*base, f"manifolds={json.dumps({'dwork': m})}"])
        assert str(e.value).startswith("dwork: ") and len(str(e.value).splitlines()) == 1
    assert not (tmp_path / "m").exists()
    good = [*base, 'manifolds={"dwork": {"psi_range": [1.2, 2.0], "single_psi": [1.5], "grid_psi": [1.5]}}']

    def stop(plan):
        raise RuntimeError("stop")

    monkeypatch.setattr(moduli, "train_plan", stop)
    with pytest.raises(RuntimeError, match="stop"):
        moduli.main(good)
    config = tmp_path / "m" / "train.yaml"
    stamp = 10**18
    os.utime(config, ns=(stamp, stamp))
    with pytest.raises(RuntimeError, match="stop"):
        moduli.main(good)
    assert config.stat().st_mtime_ns == stamp  # unchanged: not rewritten
    record = tmp_path / "m" / "dwork" / "family" / "study_args.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"train": {}, "args": ["--trainer.max_epochs=99"]}))
    with pytest.raises(SystemExit, match="was run with other settings") as e:
        moduli.main(good)
    assert str(record) in str(e.value)
