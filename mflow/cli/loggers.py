"""train.py's loggers (CSV always; W&B offline by default, online on request, off) and its quiet console."""
from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

from .errors import first_sentence

WANDB_MODES = ("offline", "online", "off")


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
    # mflow's logged measures are torchmetrics, reduced over ranks by themselves: sync_dist would only add a collective
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    # a new run refuses a used directory (mflow.cli.rundir): what is there when training starts is the resumed run's
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def check_mode(mode: str) -> None:
    """Refuse a --wandb value that is not a mode (the old 'disabled' is named by its new spelling)."""
    if mode == "disabled":
        raise ValueError("--wandb=disabled is now --wandb=off (the CSV logger in <run dir>/csv is always written)")
    if mode not in WANDB_MODES:
        raise ValueError(f"--wandb must be one of {WANDB_MODES}, not {mode!r}")


def check_online(timeout: float = 5.0) -> None:
    """Before --wandb=online writes anything: a W&B login, and the W&B server reachable within seconds."""
    import wandb

    if not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
        raise ValueError("--wandb=online needs a W&B login (`wandb login`, or WANDB_API_KEY): log in, or use "
                         "--wandb=offline and `wandb sync` the run later")
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"--wandb=online: the W&B server {url.hostname}:{port} cannot be reached ({first_sentence(str(e))}): "
                         "check the network, or use --wandb=offline and `wandb sync` the run later") from None


def make_loggers(run_dir: str, mode: str, run_id: str | None) -> list:
    """The CSV logger (<run_dir>/csv/version_<k>: a resumed run adds one) and, unless mode is 'off', W&B in that
    mode with the run's id as W&B id (a resumed run continues its own W&B run, a new run never reuses one).
    train.py has checked the connection (:func:`check_online`) before it wrote anything."""
    from lightning.pytorch.loggers import CSVLogger

    check_mode(mode)
    loggers = [CSVLogger(save_dir=run_dir, name="csv")]
    if mode == "off":
        return loggers
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="mflow", save_dir=run_dir, offline=mode == "offline", id=run_id,
                         settings=wandb.Settings(init_timeout=30, silent=True, console="off"))
    logger._wandb_init.pop("anonymous", None)  # Lightning passes anonymous=None, which W&B warns about
    try:
        _ = logger.experiment  # start it now, so that a failure is reported before any training
    except Exception as e:  # noqa: BLE001 - whatever stops W&B from starting
        raise ValueError(f"W&B could not start in {mode} mode ({type(e).__name__}: {first_sentence(str(e))}): check the "
                         "network and login, or use --wandb=offline (and `wandb sync` later) or --wandb=off") from None
    return [*loggers, logger]


def describe(logger) -> str:
    """Where a logger's files are, for the final message."""
    name = type(logger).__name__
    if name == "WandbLogger":
        offline = getattr(logger, "_offline", False)
        where = Path(logger.experiment.dir).parent
        return f"W&B {'offline' if offline else 'online'} run in {where}" + (f" (`wandb sync {where}` uploads it)" if offline else "")
    return f"{name} in {getattr(logger, 'log_dir', None) or getattr(logger, 'save_dir', '?')}"
