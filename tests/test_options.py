"""One vocabulary on the command line: every entry point spells its options like train.py (snake_case), refuses an
old spelling in one line naming the new one, and train.py's --help lists every named choice."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mflow import bo, choices
from mflow.cli.errors import run
from mflow.cli.finish import main as finish_main
from mflow.cli.options import Parser, choice_error
from mflow.data.__main__ import main as data_main
from mflow.evaluation.cli import main as evaluate_main

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studies import paper_kernels, width  # noqa: E402


def _refused(capsys, call, old, new):
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"error: {old} is now {new} " in err, err


@pytest.mark.parametrize("call,old,new", [
    (lambda: evaluate_main(["--ckpt", "x.ckpt"]), "--ckpt", "--ckpt_path"),
    (lambda: evaluate_main(["--ckpt_path", "x.ckpt", "--n-test", "5"]), "--n-test", "--n_test"),
    (lambda: evaluate_main(["--ckpt_path", "x.ckpt", "--threads=2"]), "--threads", "--num_threads"),
    (lambda: evaluate_main(["--ckpt_path", "x.ckpt", "--out", "d"]), "--out", "--out_dir"),
    (lambda: evaluate_main(["--ckpt_path", "x.ckpt", "--noise-levels", "1e-3"]), "--noise-levels", "--noise_levels"),
    (lambda: finish_main(["--ckpt", "x.ckpt"]), "--ckpt", "--ckpt_path"),
    (lambda: finish_main(["--ckpt_path", "x.ckpt", "--threads", "1"]), "--threads", "--num_threads"),
    (lambda: data_main(["sample", "--n", "5", "--out", "x.npz"]), "--n", "--n_points"),
    (lambda: data_main(["sample", "--n_points", "5", "--ambient-n", "4"]), "--ambient-n", "--ambient_n"),
    (lambda: bo.run(["--state", "s.json", "--init-points", "2"]), "--init-points", "--init_points"),
    (lambda: bo.run(["--state", "s.json", "--no-normalize"]), "--no-normalize", "--normalize=false"),
    (lambda: width.main(["--out", "d"]), "--out", "--out_dir"),
    (lambda: paper_kernels.main(["--no-unclustered"]), "--no-unclustered", "--unclustered=false"),
    (lambda: paper_kernels.main(["--no_unclustered"]), "--no_unclustered", "--unclustered=false"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_old_spellings_are_refused_in_one_line_naming_the_new(capsys, call, old, new):
    _refused(capsys, call, old, new)


def test_a_benchmark_refuses_an_old_spelling():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_evaluate.py"), "--n-test", "5"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "bench_evaluate.py: error: --n-test is now --n_test (mflow's options are snake_case, like train.py's)"]


def test_every_entry_point_builds_its_options_with_the_shared_parser():
    """No entry point other than train.py (LightningCLI) builds a plain argparse parser, so none can drift back."""
    files = [*ROOT.glob("mflow/**/*.py"), *ROOT.glob("studies/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")]
    assert [str(f.relative_to(ROOT)) for f in files if "ArgumentParser(" in f.read_text()] == []
    kebab = re.compile(r"""add_argument\(\s*["']--[a-z0-9]+-""")
    assert [str(f.relative_to(ROOT)) for f in files if kebab.search(f.read_text())] == []


def test_the_parser_refuses_a_kebab_option_and_abbreviations():
    p = Parser(prog="x")
    with pytest.raises(ValueError, match="not snake_case"):
        p.add_argument("--n-test")
    p.add_argument("--n_points", type=int)
    with pytest.raises(SystemExit):  # --n is an old spelling somewhere, never an abbreviation here
        p.parse_args(["--n_p", "3"])
    ns, rest = p.parse_known_args(["--n_points", "3", "--", "--n-test"])  # nothing after "--" is an option
    assert ns.n_points == 3 and "--n-test" in rest


def test_the_choice_tuples_are_the_registries():
    from mflow.data.clustering import LINKAGES, MERGES
    from mflow.data.population import POPULATIONS
    from mflow.flows.base import PD_POLICIES
    from mflow.geometry.presets import PRESETS
    from mflow.kernels.registry import KERNELS
    from mflow.losses import LOSSES, METRIC_LOSSES
    from mflow.models.mlp import ACTIVATIONS, PARAMETRIZATIONS

    assert choices.MANIFOLDS == PRESETS and choices.POPULATIONS is POPULATIONS
    assert set(choices.ACTIVATIONS) == set(ACTIVATIONS) and choices.PARAMETRIZATIONS is PARAMETRIZATIONS
    assert set(choices.LOSS_TERMS) == set(LOSSES) and set(choices.METRIC_LOSSES) == set(METRIC_LOSSES)
    assert set(choices.KERNEL_NAMES) == set(KERNELS) and (choices.MERGES, choices.LINKAGES) == (MERGES, LINKAGES)
    assert PD_POLICIES == choices.PD_POLICIES == ("stop", "continue", "backtrack", "clip")
    with pytest.raises(ValueError, match="^head must be one of free, addfs, multfs, matrixfs, phifs, bihomogeneous; "
                                         "got 'x'$"):
        choices.check_choice("head", "x", choices.Head)


def test_train_help_lists_every_choice():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300).stdout
    for line in ("NetworkFlow.head: free | addfs | multfs | matrixfs | phifs | bihomogeneous",
                 "NetworkFlow.activation: relu | gelu | tanh | cos", "NetworkFlow.parametrization: standard | ntk | mup",
                 "NetworkFlow.features: chart | invariant", "NetworkFlow.pd_policy: stop | continue\n", "KernelFlow.pd_policy: stop | continue | backtrack | clip",
                 "NetworkFlow.loss_weights: sigma | ultra_local_square | ultra_local_entropy | volume | kaehler",
                 "KernelFlow.kernel: relu | cosine | gaussian | delta | empirical | scaled | network_ntk",
                 "KernelFlow.chart_mode: ambient | transform | reject", "KernelFlow.reduction: mean | sum",
                 "CYDataModule.manifold: fermat_quintic |", "NTKDrift.kind: full | trace | diagonal"):
        assert line in out, line


def test_a_bad_choice_is_one_line_naming_the_choices(tmp_path, capsys):
    from mflow.cli.train import main

    for arg, message in (("--model.activation=swish", "model.activation must be one of relu, gelu, tanh, cos; got 'swish'"),
                         ("--model.pd_policy=raise", "pd_policy 'raise' is now called 'stop'"),
                         ("--data.population=some", "data.population must be one of all_charts, one_chart; got 'some'")):
        assert run(main, "train.py", [arg, f"--run_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert choice_error("something else") is None
