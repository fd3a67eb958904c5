"""The train.py command line: LightningCLI with mflow's run directory, logger, checkpoints and resume.

What a user asks for is honoured or refused with a message, never dropped:
  --run_dir / --trainer.default_root_dir   the run directory (one implies the other; two different ones are refused)
  --trainer.logger                         the user's loggers are used as given (then --wandb is refused)
  --wandb offline | online | disabled      mflow's own logger; online must start, or the run stops before training
  --trainer.callbacks                      kept, ModelCheckpoints included; mflow adds last.ckpt (resume), the best
                                           checkpoint by val/sigma and RunSummary (no checkpoints of its own with
                                           --trainer.enable_checkpointing=false: such a run cannot be resumed)
  --optimizer / --lr_scheduler             replace the model's own optimizer (said at start; summary.json records
                                           what ran); refused for kernel flows, which take no optimizer
  --trainer.enable_progress_bar            default: a bar on a terminal, one line per epoch otherwise
  --resume RUN_DIR | --ckpt_path CKPT      continue that run with its own settings (mflow.cli.resume)
Run results: <run dir>/summary.json, config.yaml (the full configuration: ``--config`` it to rerun),
checkpoints/ (last.ckpt and the best), ntk_drift.json/.png, the logger's files.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import yaml
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from mflow.callbacks import EpochLines, RunSummary
from mflow.flows.checkpoint import AtomicCheckpointIO
from mflow.io import atomic_write, remove_stale_temporaries

from .loggers import WANDB_MODES, describe, make_logger, quiet_dependencies
from .resume import parse_options, resume_arguments

LINKED = ("manifold", "psi", "ambient_n", "surface_seed", "kahler")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "default.yaml"


class RunConfig(SaveConfigCallback):
    """Writes the full configuration to <run dir>/config.yaml (atomically), where --resume finds it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer, pl_module, stage) -> None:
        cfg = self.config.clone()  # the run's settings, not where it went nor what it resumed from:
        cfg.run_dir = cfg.resume = cfg.ckpt_path = cfg.trainer.default_root_dir = None  # --config it to rerun elsewhere
        text = self.parser.dump(cfg, skip_none=False)
        atomic_write(Path(trainer.default_root_dir) / self.config_filename, lambda tmp: Path(tmp).write_text(text))


class MflowCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.set_defaults({
            "model": {"class_path": "mflow.flows.network.NetworkFlow"},
            "data": {"class_path": "mflow.data.datamodule.CYDataModule"},
        })
        for k in LINKED:
            parser.link_arguments(f"data.init_args.{k}", f"model.init_args.{k}")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="where results go (default: --trainer.default_root_dir, else runs/<time>-<head>)")
        parser.add_argument("--resume", type=str | None, default=None, help="continue this run directory with its own settings")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="continue the run that wrote this checkpoint")
        parser.add_argument("--wandb", type=str | None, default=None,
                            help="mflow's logger: offline (default) | online | disabled (CSV); not with --trainer.logger")
        parser.add_argument("--test", type=bool, default=True, help="run the test split after fit")
        parser.add_argument("--num_threads", type=int | None, default=None,
                            help="torch CPU threads (default: torch's, all cores: fastest for every job measured, "
                                 "bench/bench_threads.py)")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=200,
                            help="last.ckpt is rewritten this often (mid-epoch resume)")

    def before_instantiate_classes(self):
        cfg = self.config
        model_class = cfg.model.class_path
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        cfg.num_threads = torch.get_num_threads()  # recorded in config.yaml
        user_logger = cfg.trainer.logger not in (None, False)
        if user_logger and cfg.wandb is not None:
            raise ValueError("--wandb sets mflow's own logger; with --trainer.logger give your loggers there (a "
                             "WandbLogger among them, if you want W&B) and leave --wandb out")
        if not user_logger:
            cfg.wandb = cfg.wandb or "offline"
            if cfg.wandb not in WANDB_MODES:
                raise ValueError(f"--wandb must be one of {WANDB_MODES}, not {cfg.wandb!r}")
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
        for d in (Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"):
            remove_stale_temporaries(d)


def build_trainer_extras(cli: MflowCLI, extra_callbacks=()) -> RunSummary:
    """mflow's additions to the trainer: atomic checksummed checkpoints, the logger, last.ckpt and the best
    checkpoint, the run summary, epoch lines when there is no progress bar; returns the RunSummary."""
    cfg, trainer = cli.config, cli.trainer
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if cfg.wandb is not None:  # mflow's own logger (the user gave none)
        trainer.loggers = [make_logger(cfg.run_dir, cfg.wandb)]
    summary = RunSummary()
    callbacks = list(trainer.callbacks)
    user_checkpoints = any("Checkpoint" in str(c.get("class_path", "")) for c in (cfg.trainer.callbacks or [])
                           if hasattr(c, "get"))
    if not user_checkpoints:  # the ModelCheckpoint Lightning adds by default is replaced by mflow's two
        callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)]
    if cfg.trainer.enable_checkpointing is not False:
        ckpt_dir = str(Path(cfg.run_dir) / "checkpoints")
        callbacks += [
            ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch}-sigma{val/sigma:.4f}", auto_insert_metric_name=False,
                            monitor="val/sigma", mode="min"),
            ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=cfg.checkpoint_every_n_steps),
        ]
    callbacks += [summary, *extra_callbacks] + ([] if cfg.trainer.enable_progress_bar else [EpochLines()])
    # checkpoints last, as Lightning orders them: they then hold what the other callbacks did in that step
    trainer.callbacks[:] = [c for c in callbacks if not isinstance(c, Checkpoint)] + [c for c in callbacks if isinstance(c, Checkpoint)]
    return summary


def main(args=None, callbacks=()):
    """train.py: fit (+ test) as the command line says; ``callbacks`` are added to mflow's own (benchmarks and
    tests use this). Returns the trainer."""
    quiet_dependencies()
    argv = list(sys.argv[1:] if args is None else args)
    argv, resumed = resume_arguments(argv)
    defaults = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.exists() else []
    check_config_files(defaults + [v for k, v in parse_options(argv) if k in ("config", "c") and v])
    try:
        cli = MflowCLI(
            L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
            args=argv, save_config_callback=RunConfig, save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "max_epochs": 20, "accelerator": "auto", "devices": "auto", "log_every_n_steps": 10, "logger": False,
                "inference_mode": False,  # derivative heads (phifs) and curvature need autograd in val/test
                "enable_model_summary": False,
            },
            seed_everything_default=0,
            parser_kwargs={"default_env": False, "default_config_files": defaults, "exit_on_error": False},
        )
    except argparse.ArgumentError as e:
        raise ValueError(f"{condensed(str(e))} (train.py --help lists the options)") from None
    if resumed is not None:
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    cfg, trainer = cli.config, cli.trainer
    summary = build_trainer_extras(cli, callbacks)
    if resumed is not None:
        print(f"[mflow] resuming {resumed} from {cfg.ckpt_path}")
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cfg.ckpt_path)
    if cfg.test and not trainer.interrupted:
        trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    if trainer.is_global_zero:
        print(final_message(cfg.run_dir, summary, trainer))
    return trainer


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
        figures = f" val sigma {sig['val']:.4g} (gain {gain['val']:.3g}), test sigma {sig['test']:.4g} (gain {gain['test']:.3g});"
    where = [f"summary.json,{figures} config.yaml, checkpoints/"]
    where += [describe(lg) for lg in trainer.loggers]
    return f"[mflow] results in {run_dir}: " + "; ".join(where)
