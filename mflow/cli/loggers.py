"""train.py's logger (W&B offline by default, online on request, CSV when disabled) and its quiet console."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

WANDB_MODES = ("offline", "online", "disabled")


def quiet_dependencies() -> None:
    """No adverts, device banners or deprecation noise from dependencies in a normal run (warnings that concern
    the run itself stay)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="wandb")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # batches are slices: 0 workers is fastest
    warnings.filterwarnings("ignore", message=".*litlogger.*|.*litmodels.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # torch's pytree, inside Lightning
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # train.py passes sys.argv
    # kernel flows step their state themselves; a checkpoint after the step is what resume needs
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def previous_wandb_id(run_dir: str) -> str | None:
    """The id of the W&B run an earlier start of this run directory made (None if there is none)."""
    runs = sorted(Path(run_dir, "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def make_logger(run_dir: str, mode: str):
    """W&B offline (mode 'offline'), W&B online ('online': must start, or ValueError says what to do), or a CSV
    logger in <run_dir>/csv ('disabled'). A resumed run continues the W&B run of its directory (same id)."""
    if mode not in WANDB_MODES:
        raise ValueError(f"--wandb must be one of {WANDB_MODES}, not {mode!r}")
    if mode == "disabled":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=run_dir, name="csv")  # csv/version_<k>: a resumed run adds one, keeping the earlier
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
        raise ValueError("--wandb=online needs a W&B login (`wandb login`, or WANDB_API_KEY): log in, or use "
                         "--wandb=offline and `wandb sync` the run later")
    logger = WandbLogger(project="mflow", save_dir=run_dir, offline=mode == "offline", id=previous_wandb_id(run_dir),
                         settings=wandb.Settings(init_timeout=60, silent=True, console="off"))
    logger._wandb_init.pop("anonymous", None)  # Lightning passes anonymous=None, which W&B warns about
    try:
        _ = logger.experiment  # start it now, so that a failure is reported before any training
    except Exception as e:  # noqa: BLE001 - whatever stops W&B from starting
        raise ValueError(f"W&B could not start in {mode} mode ({type(e).__name__}: {str(e)[:200]}): check the network "
                         "and login, or use --wandb=offline (and `wandb sync` later) or --wandb=disabled") from None
    return logger


def describe(logger) -> str:
    """Where a logger's files are, for the final message."""
    name = type(logger).__name__
    if name == "WandbLogger":
        offline = getattr(logger, "_offline", False)
        where = Path(logger.experiment.dir).parent
        return f"W&B {'offline' if offline else 'online'} run in {where}" + (f" (`wandb sync {where}` uploads it)" if offline else "")
    return f"{name} in {getattr(logger, 'log_dir', None) or getattr(logger, 'save_dir', '?')}"
