"""The train.py command line: LightningCLI with mflow's defaults (run dir, logger, checkpoints)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .callbacks import RunSummary
from .io import AtomicCheckpointIO

LINKED = ("manifold", "psi", "ambient_n", "surface_seed")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"


class MflowCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.set_defaults({
            "model": {"class_path": "mflow.modules.NetworkFlow"},
            "data": {"class_path": "mflow.data.datamodule.CYDataModule"},
        })
        for k in LINKED:
            parser.link_arguments(f"data.init_args.{k}", f"model.init_args.{k}")
        parser.add_argument("--run_dir", type=str | None, default=None, help="where results go (default runs/<time>-<head>)")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume fit from this checkpoint")
        parser.add_argument("--wandb", type=str, default="offline", help="W&B mode: offline | online | disabled (CSV only)")
        parser.add_argument("--test", type=bool, default=True, help="run the test split after fit")
        parser.add_argument("--num_threads", type=int | None, default=1, help="torch CPU threads (1 is fastest for small batches; None: torch's default)")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=200, help="last.ckpt is rewritten this often (mid-epoch resume)")

    def before_instantiate_classes(self):
        cfg = self.config
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if cfg.wandb not in ("offline", "online", "disabled"):
            raise ValueError(f"--wandb must be offline, online or disabled, not {cfg.wandb!r}")
        if cfg.run_dir is None:
            name = cfg.model.init_args.get("head") or cfg.model.class_path.rsplit(".", 1)[-1].lower()
            cfg.run_dir = str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
        cfg.trainer.default_root_dir = cfg.run_dir


def make_logger(run_dir: str, mode: str):
    """W&B (offline unless mode='online'), or a CSV logger when W&B is disabled or cannot start."""
    if mode != "disabled":
        try:
            from lightning.pytorch.loggers import WandbLogger

            os.environ.setdefault("WANDB_SILENT", "true")
            logger = WandbLogger(project="mflow", save_dir=run_dir, offline=(mode != "online"))
            _ = logger.experiment  # start it now, so that failure falls back here
            return logger
        except Exception as e:  # noqa: BLE001 - any start-up failure means CSV
            print(f"[mflow] W&B could not start ({type(e).__name__}: {e}); logging to CSV instead")
    return CSVLogger(save_dir=run_dir, name="csv")


def main(args=None, callbacks=()):
    """Run train.py's fit (+ test); ``callbacks`` are added to mflow's own (benchmarks use this)."""
    cli = MflowCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "max_epochs": 20,
            "accelerator": "auto",
            "devices": "auto",
            "log_every_n_steps": 10,
            "logger": False,
            "inference_mode": False,  # derivative heads (phifs) and curvature need autograd in val/test
        },
        seed_everything_default=0,
        parser_kwargs={"default_env": False, "default_config_files": [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.exists() else []},
    )
    run_dir = cli.config.run_dir
    trainer = cli.trainer
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    trainer.loggers = [make_logger(run_dir, cli.config.wandb)]
    ckpt_dir = str(Path(run_dir) / "checkpoints")
    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="epoch{epoch}-sigma{val/sigma:.4f}",
        auto_insert_metric_name=False, monitor="val/sigma", mode="min",
    )
    last = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=cli.config.checkpoint_every_n_steps)
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + [best, last, RunSummary(), *callbacks]
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    if cli.config.test and not trainer.interrupted:
        trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    print(f"[mflow] results in {run_dir}: summary.json, checkpoints/, config.yaml")
    return trainer
