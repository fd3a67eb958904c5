"""Resuming a run: ``--resume runs/<run>`` (or ``--ckpt_path runs/<run>/checkpoints/<name>.ckpt`` alone) continues
that run with its own saved configuration (runs/<run>/config.yaml), in its own directory, from its checkpoint.

Only settings that cannot change what has been computed may be given again (more epochs or steps, logging,
threads); anything else is refused with a message, because the resumed run would silently differ from the one
that wrote the checkpoint (a different learning rate, other points, another model).
"""
from __future__ import annotations

from pathlib import Path

from mflow.flows.checkpoint import read_checkpoint

SAFE_ON_RESUME = {
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.enable_progress_bar",
    "trainer.log_every_n_steps", "trainer.check_val_every_n_epoch", "test", "num_threads", "wandb",
    "checkpoint_every_n_steps",
}


def parse_options(argv: list[str]) -> list[tuple[str, str | None]]:
    """The command line as (key, value) pairs, for ``--key=value``, ``--key value``, bare ``--flag`` and the
    short ``-h`` / ``-c FILE`` of LightningCLI (keys 'h', 'c')."""
    def short(tok):
        return len(tok) == 2 and tok[0] == "-" and tok[1].isalpha()

    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if not (tok.startswith("--") or short(tok)):
            raise ValueError(f"unexpected argument {tok!r}: options are --key=value")
        name = tok[1:] if short(tok) else tok[2:]
        if "=" in name:
            k, v = name.split("=", 1)
        elif i + 1 < len(argv) and not (argv[i + 1].startswith("--") or short(argv[i + 1])):
            k, v = name, argv[i + 1]
            i += 1
        else:
            k, v = name, None
        out.append((k, v))
        i += 1
    return out


def run_of_checkpoint(ckpt: Path) -> Path:
    """The run directory that wrote a checkpoint (runs/<run>/checkpoints/x.ckpt -> runs/<run>)."""
    if ckpt.parent.name != "checkpoints":
        raise ValueError(f"--ckpt_path {ckpt}: resuming needs a checkpoint of a train.py run (in <run dir>/checkpoints/)")
    return ckpt.parent.parent


def resume_arguments(argv: list[str]) -> tuple[list[str], Path | None]:
    """argv rewritten for a resumed run (its config, directory and checkpoint first, then the safe overrides),
    and the run directory; argv unchanged and None when nothing is resumed."""
    opts = parse_options(argv)
    keys = dict(opts)
    if "resume" not in keys and "ckpt_path" not in keys:
        return argv, None
    if "resume" in keys and "ckpt_path" in keys:
        raise ValueError("give --resume RUN_DIR or --ckpt_path CHECKPOINT, not both")
    if "resume" in keys:
        if not keys["resume"]:
            raise ValueError("--resume needs the run directory: --resume runs/<run>")
        run = Path(keys["resume"])
        ckpt = run / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ValueError(f"--resume {run}: there is no {ckpt} to resume from (was the run started there?)")
    else:
        ckpt = Path(keys["ckpt_path"] or "")
        if not ckpt.is_file():
            raise ValueError(f"--ckpt_path {ckpt}: no such checkpoint file")
        run = run_of_checkpoint(ckpt)
    config = run / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{run} has no config.yaml: the run's settings are unknown, so it cannot be resumed")
    refused = sorted(k for k, _ in opts if k not in SAFE_ON_RESUME | {"resume", "ckpt_path"})
    if refused:
        raise ValueError(
            f"a resumed run keeps its own settings ({config}); {', '.join('--' + k for k in refused)} cannot change "
            f"on resume (allowed: {', '.join('--' + k for k in sorted(SAFE_ON_RESUME))}). Start a new run to change them"
        )
    raw = read_checkpoint(ckpt)  # a corrupt checkpoint is refused before anything is written
    if raw.get("mflow", {}).get("finished"):
        raise ValueError(f"{ckpt} was written by finish.py (L-BFGS, no optimizer state): it is evaluated, not resumed; "
                         "resume the run's own last.ckpt")
    safe = [f"--{k}={v}" if v is not None else f"--{k}" for k, v in opts if k in SAFE_ON_RESUME]
    return ["--config", str(config), *safe, f"--ckpt_path={ckpt}", f"--run_dir={run}"], run
