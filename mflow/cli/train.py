"""The train.py command line: LightningCLI with mflow's run directory, logger, checkpoints and resume.

What a user asks for is honoured or refused with a message, never dropped:
  --run_dir / --trainer.default_root_dir   the run directory (one implies the other; two different ones are refused)
  --trainer.logger                         the user's loggers are used as given (then --wandb is refused)
  --wandb offline | online | off           W&B beside the CSV logger (<run dir>/csv, always); online must start
                                           (login, server reachable) or the run stops before writing anything
  --trainer.callbacks                      kept, ModelCheckpoints included; mflow adds last.ckpt (resume), the best
                                           checkpoint by val/sigma and RunSummary (no checkpoints of its own with
                                           --trainer.enable_checkpointing=false: such a run cannot be resumed)
  --optimizer / --lr_scheduler             replace the model's own optimizer (said at start; summary.json records
                                           what ran); refused for kernel flows, which take no optimizer
  --trainer.enable_progress_bar            default: a bar on a terminal, one line per epoch otherwise
  --resume RUN_DIR | --ckpt_path CKPT      continue that run with its own settings (mflow.cli.resume)
  --data.manifold=X without --config       X's shipped config (mflow.configs.PRESET_CONFIGS) is the base config,
                                           said in one line; the command line's options still win
  --overwrite                              a new run in a directory that holds one replaces it (else refused)
One run per directory, locked while it runs (mflow.cli.rundir); every check that can be made before training is
made before anything is written, and a start that fails removes what it created.
Run results: <run dir>/summary.json, config.yaml (the full configuration: ``--config`` it to rerun),
checkpoints/ (last.ckpt = the final state, written when training ends, and the best by val sigma),
ntk_drift.json/.png, the loggers' files.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import yaml
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from mflow.callbacks import EpochLines, RunSummary
from mflow.callbacks.checkpoints import LastCheckpoint, RunCheckpoint
from mflow.configs import default_config, preset_config
from mflow.flows.checkpoint import AtomicCheckpointIO
from mflow.io import atomic_write, check_writable, remove_stale_temporaries

from .options import choice_error, help_formatter, train_choices
from .threads import configure_threads, thread_share
from .loggers import check_mode, check_online, describe, make_loggers, quiet_dependencies
from .resume import Resume, check_still_newest, parse_options, resume_arguments
from .rundir import RunDir, new_run_id

DEFAULT_CONFIG = default_config()  # conf/default.yaml, of the checkout or of the installed wheel (missing: an error)


TRAINER_DEFAULTS = {  # max_epochs: conf/default.yaml's (tests/test_defaults.py holds the code defaults equal to it)
    "max_epochs": 10, "accelerator": "auto", "devices": "auto", "log_every_n_steps": 10, "logger": False,
    "inference_mode": False,  # derivative heads (phifs) and curvature need autograd in val/test
    "enable_model_summary": False,
}


class RunConfig(SaveConfigCallback):
    """Writes the full configuration to <run dir>/config.yaml (atomically), where --resume finds it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer, pl_module, stage) -> None:
        cfg = self.config.clone()  # the run's settings, not where it went nor what it resumed from:
        cfg.run_dir = cfg.resume = cfg.ckpt_path = cfg.trainer.default_root_dir = None  # --config it to rerun elsewhere
        cfg.overwrite = False  # (the run id stays: --resume reads it; a new run from this file gets its own)
        text = self.parser.dump(cfg, skip_none=False)
        atomic_write(Path(trainer.default_root_dir) / self.config_filename, lambda tmp: Path(tmp).write_text(text))


class MflowCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.set_defaults({
            "model": {"class_path": "mflow.flows.network.NetworkFlow"},
            "data": {"class_path": "mflow.data.datamodule.CYDataModule"},
        })
        # the manifold is configured once, in the data section: the model is built on the datamodule's
        parser.link_arguments("data.surface", "model.init_args.surface", apply_on="instantiate")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="where results go (default: --trainer.default_root_dir, else runs/<time>-<head>)")
        parser.add_argument("--resume", type=str | None, default=None, help="continue this run directory with its own settings")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="continue the run that wrote this checkpoint")
        parser.add_argument("--wandb", type=str | None, default=None,
                            help="W&B beside the CSV logger: offline (default) | online | off; not with --trainer.logger")
        parser.add_argument("--overwrite", type=bool, nargs="?", const=True, default=False,
                            help="a new run in a directory that holds a run replaces it (its files are removed first)")
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="set by train.py: the run's id (in its checkpoints; its W&B id); not an option to give")
        parser.add_argument("--test", type=bool, default=True, help="run the test split after fit")
        parser.add_argument("--num_threads", type=int | None, default=None,
                            help="torch CPU threads (default: the machine's cores shared among the mflow runs on it, "
                                 "re-checked every epoch: mflow.cli.threads)")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=200,
                            help="last.ckpt is rewritten this often (mid-epoch resume)")

    def before_instantiate_classes(self):
        cfg = self.config
        model_class = cfg.model.class_path
        configure_threads(cfg.num_threads)  # None (recorded so in config.yaml): the fair share, re-checked per epoch
        user_logger = cfg.trainer.logger not in (None, False)
        if user_logger and cfg.wandb is not None:
            raise ValueError("--wandb sets mflow's own logger; with --trainer.logger give your loggers there (a "
                             "WandbLogger among them, if you want W&B) and leave --wandb out")
        if not user_logger:
            cfg.wandb = cfg.wandb or "offline"
            check_mode(cfg.wandb)
        check_accelerator(str(cfg.trainer.accelerator))
        if cfg.ckpt_path is None or cfg.run_id is None:  # a new run (even from another run's config.yaml) gets its own
            cfg.run_id = new_run_id()
        root = cfg.trainer.default_root_dir
        if cfg.run_dir is not None and root is not None and Path(cfg.run_dir).resolve() != Path(root).resolve():
            raise ValueError(f"--run_dir={cfg.run_dir} and --trainer.default_root_dir={root} differ: give one of them "
                             "(both name the run directory)")
        if cfg.run_dir is None:
            name = cfg.model.init_args.get("head") or model_class.rsplit(".", 1)[-1].lower()
            cfg.run_dir = str(root) if root is not None else str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
        cfg.trainer.default_root_dir = cfg.run_dir
        if model_class.endswith("KernelFlow") and (cfg.get("optimizer") or cfg.get("lr_scheduler")):
            raise ValueError("a frozen-kernel flow takes no --optimizer / --lr_scheduler: its step size is "
                             "--model.lr (and --model.lr_step_decay)")
        if cfg.get("optimizer"):
            print(f"[mflow] --optimizer {cfg.optimizer.class_path.rsplit('.', 1)[-1]} replaces the model's own "
                  "optimizer and schedule (model.optimizer, lr, lr_decay are not used); summary.json records what ran")
        if cfg.trainer.enable_progress_bar is None:
            cfg.trainer.enable_progress_bar = sys.stdout.isatty()


class _Parsed(Exception):
    """Carries the parsed configuration out of :class:`_ParseOnly`."""


class _ParseOnly(MflowCLI):
    """Parses a command line and stops before anything is set or built (mflow.cli.resume compares settings)."""

    def before_instantiate_classes(self):
        raise _Parsed(self.config)


def build_trainer_extras(cli: MflowCLI, extra_callbacks=()) -> tuple[RunSummary, LastCheckpoint | None]:
    """mflow's additions to the trainer: atomic checksummed checkpoints, the loggers, last.ckpt and the best
    checkpoint, the run summary, epoch lines when there is no progress bar; returns the RunSummary and the
    last.ckpt callback (None without checkpointing)."""
    cfg, trainer = cli.config, cli.trainer
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if cfg.wandb is not None:  # mflow's own loggers (the user gave none)
        trainer.loggers = make_loggers(cfg.run_dir, cfg.wandb, cfg.run_id)
    summary, last = RunSummary(), None
    callbacks = list(trainer.callbacks)
    user_checkpoints = any("Checkpoint" in str(c.get("class_path", "")) for c in (cfg.trainer.callbacks or [])
                           if hasattr(c, "get"))
    if not user_checkpoints:  # the ModelCheckpoint Lightning adds by default is replaced by mflow's two
        callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)]
    if cfg.trainer.enable_checkpointing is not False:
        ckpt_dir = str(Path(cfg.run_dir) / "checkpoints")
        last = LastCheckpoint(ckpt_dir, cfg.checkpoint_every_n_steps, cfg.run_id)
        callbacks += [
            RunCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch}-sigma{val/sigma:.4f}", auto_insert_metric_name=False,
                          monitor="val/sigma", mode="min"),
            last,
        ]
    callbacks += [summary, *extra_callbacks] + ([] if cfg.trainer.enable_progress_bar else [EpochLines()])
    callbacks += [thread_share()] if cfg.num_threads is None else []
    # checkpoints last, as Lightning orders them: they then hold what the other callbacks did in that step
    trainer.callbacks[:] = [c for c in callbacks if not isinstance(c, Checkpoint)] + [c for c in callbacks if isinstance(c, Checkpoint)]
    return summary, last


def make_cli(argv: list[str], cls=MflowCLI) -> MflowCLI:
    """The CLI of a command line: parsed and built (model, data, trainer; nothing written)."""
    defaults = [str(DEFAULT_CONFIG)]
    check_config_files(defaults + [v for k, v in parse_options(argv) if k in ("config", "c") and v])
    try:
        return cls(
            L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
            args=argv, save_config_callback=RunConfig, save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            parser_kwargs={"default_env": False, "default_config_files": defaults, "exit_on_error": False,
                           "epilog": train_choices(), "formatter_class": help_formatter()},
        )
    except argparse.ArgumentError as e:
        raise ValueError(choice_error(str(e)) or f"{condensed(str(e))} (train.py --help lists the options)") from None
    except MisconfigurationException as e:  # Lightning's refusal of a trainer setting
        raise ValueError(f"{e} (a --trainer setting)") from None


def settings(argv: list[str]) -> dict:
    """The settings a command line resolves to, flat ({'model.init_args.lr': 0.01, ...}); nothing is built."""
    try:
        make_cli(argv, cls=_ParseOnly)
    except _Parsed as parsed:
        return flatten(parsed.args[0].as_dict())
    raise AssertionError("unreachable")


def main(args=None, callbacks=()):
    """train.py: fit (+ test) as the command line says; ``callbacks`` are added to mflow's own (benchmarks and
    tests use this). Returns the trainer (None when a resumed run had nothing left to do)."""
    quiet_dependencies()
    argv = list(sys.argv[1:] if args is None else args)
    check_values(parse_options(argv))
    argv, resumed = resume_arguments(argv, settings)  # a resumed run's argv names its config.yaml: nothing is picked
    argv, picked = preset_arguments(argv)
    if picked and rank_zero_only.rank == 0:  # before the build, whose errors may be about the picked config's values
        print(picked, file=sys.stderr if "print_config" in dict(parse_options(argv)) else sys.stdout)  # stdout: YAML
    cli = make_cli(argv)
    cfg, trainer = cli.config, cli.trainer
    if resumed is not None and nothing_left(resumed, trainer) and (resumed.run / "summary.json").exists():
        print(f"[mflow] {resumed.run} is finished ({resumed.epoch} epochs, step {resumed.step}): nothing to do "
              "(a larger --trainer.max_epochs or --trainer.max_steps continues it)")
        return None
    check_writable(cfg.run_dir, "run directory")
    if cfg.wandb == "online":
        check_online()
    note = duration_note(trainer.max_epochs, trainer.max_steps, cfg.trainer.max_time)
    if note and trainer.is_global_zero:
        print(note)
    with RunDir(cfg.run_dir, new_run=resumed is None, overwrite=cfg.overwrite, active=trainer.global_rank == 0) as rd:
        if resumed is not None and trainer.global_rank == 0:
            check_still_newest(resumed)
        for d in (Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"):
            remove_stale_temporaries(d)
        check_data(cli)
        rd.make_room()
        summary, last = build_trainer_extras(cli, callbacks)
        if resumed is not None:
            print(f"[mflow] resuming {resumed.run} from {cfg.ckpt_path} (step {resumed.step})")
        with last.interruptible() if last is not None else nullcontext():
            trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cfg.ckpt_path)
        stopped = last is not None and last.end == "interrupted"
        if cfg.test and not trainer.interrupted and not stopped:
            trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    if trainer.is_global_zero:
        if stopped:
            print(f"[mflow] interrupted at step {trainer.global_step}: {last.last_model_path} holds this state; "
                  f"--resume {cfg.run_dir} continues the run")
        print(final_message(cfg.run_dir, summary, trainer))
    return trainer


def preset_arguments(argv: list[str]) -> tuple[list[str], str | None]:
    """``--data.manifold=X`` without ``--config``: argv with X's shipped config first (the options after it win) and
    the line that says so; argv and None otherwise (an unknown X is left to the parser's message)."""
    opts = parse_options(argv)
    keys = {k for k, _ in opts}
    manifold = next((v for k, v in reversed(opts) if k in ("data.manifold", "data.init_args.manifold")), None)
    path = preset_config(manifold) if manifold and not keys & {"config", "c"} else None
    if path is None:
        return argv, None
    plain = "" if path == DEFAULT_CONFIG else f"; --config {DEFAULT_CONFIG} runs the plain default"
    return ["--config", str(path), *argv], (f"[mflow] --data.manifold={manifold} without --config: base config "
                                             f"{path}, the preset's shipped one (options given here still win{plain})")


def check_data(cli) -> None:
    """Load the points and check them against the callbacks (``check_data(datamodule)``) before training."""
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    for cb in cli.trainer.callbacks:
        if hasattr(cb, "check_data"):
            cb.check_data(dm)


def nothing_left(resumed: Resume, trainer) -> bool:
    """Whether a run resumed from its final state has reached the trainer's max_epochs / max_steps."""
    if resumed.end is None:  # a checkpoint written during training: the epoch it holds is not over
        return False
    steps, epochs = trainer.max_steps, trainer.max_epochs
    return (steps not in (None, -1) and resumed.step >= steps) or (epochs not in (None, -1) and resumed.epoch >= epochs)


def duration_note(max_epochs, max_steps, max_time) -> str | None:
    """What a run without an epoch or step limit does, said at its start (None when it has one)."""
    if max_epochs not in (None, -1) or max_steps not in (None, -1):
        return None
    until = f"max_time={max_time}" if max_time else "stopped"
    return (f"[mflow] --trainer.max_epochs=-1: training runs until {until} (Ctrl-C stops it after the current step "
            "and saves the state to checkpoints/last.ckpt)")


def check_accelerator(accelerator: str) -> None:
    """Refuse an accelerator this machine does not have, in one line."""
    name = accelerator.lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"--trainer.accelerator={accelerator}: torch finds no GPU on this machine; use "
                         "--trainer.accelerator=cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--trainer.accelerator=mps: MPS is not available here; use --trainer.accelerator=cpu (or auto)")


def check_values(opts) -> None:
    """Refuse NaN and infinite numbers on the command line (jsonargparse's message does not say why)."""
    for k, v in opts:
        if v is not None and v.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            name = k.rsplit(".", 1)[-1]
            kind = "a positive finite number" if name == "lr" or name.endswith("_lr") else "a finite number"
            raise ValueError(f"--{k}={v}: {name} must be {kind}")
        if k == "run_id":
            raise ValueError("--run_id is set by train.py (a new run gets a new one); --resume RUN_DIR continues a run")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict with dotted keys (lists and other values kept whole)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def check_config_files(paths) -> None:
    """Refuse a config file that is missing or not valid YAML, naming the file and the line."""
    for p in map(Path, paths):
        if not p.is_file():
            raise ValueError(f"config file {p} does not exist")
        try:
            yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ValueError(f"config file {p} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def condensed(message: str) -> str:
    """jsonargparse's multi-line parse error without its type listings."""
    keep = [ln.strip() for ln in message.splitlines()
            if ln.strip() and not ln.strip().startswith(("Subtypes:", "Given value type:", "- Expected a <class 'NoneType'>"))]
    return " ".join(keep)


def final_message(run_dir: str, summary: RunSummary, trainer) -> str:
    s = summary.summary or {}
    figures = ""
    if s:
        sig, gain = s["sigma_final"], s["gain"]
        figures = (f" val sigma {sig['val']:.4g} (gain sigma_FS / sigma {gain['val']:.3g}), test sigma "
                   f"{sig['test']:.4g} (gain {gain['test']:.3g});")
    where = [f"summary.json,{figures} config.yaml, checkpoints/"]
    where += [describe(lg) for lg in trainer.loggers]
    return f"[mflow] results in {run_dir}: " + "; ".join(where)
