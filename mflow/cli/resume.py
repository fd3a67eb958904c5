"""Resuming a run: ``--resume runs/<run>`` (or ``--ckpt_path runs/<run>/checkpoints/<name>.ckpt``) continues that
run with its own saved configuration (runs/<run>/config.yaml), in its own directory (whatever it is called now),
from the newest valid checkpoint of the run (checksum verified; corrupt ones and other runs' are skipped and named)
or the one given.

Only settings that cannot change what has been computed may be changed (more epochs or steps, logging, threads);
an option that repeats the run's own value is no change; anything else is refused with a message, because the
resumed run would silently differ from the one that wrote the checkpoint (another learning rate, other points).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mflow.flows.checkpoint import CheckpointError, read_checkpoint

from .errors import first_sentence

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


def as_argv(opts: list[tuple[str, str | None]]) -> list[str]:
    """(key, value) pairs back as a command line (the inverse of :func:`parse_options`)."""
    out = []
    for k, v in opts:
        short = k in ("c", "h")  # LightningCLI's -c FILE and -h
        out += ([f"-{k}"] if short else [f"--{k}"]) if v is None else [f"-{k}", v] if short else [f"--{k}={v}"]
    return out


def run_of_checkpoint(ckpt: Path) -> Path:
    """The run directory that wrote a checkpoint (runs/<run>/checkpoints/x.ckpt -> runs/<run>)."""
    if ckpt.parent.name != "checkpoints":
        raise ValueError(f"--ckpt_path {ckpt}: resuming needs a checkpoint of a train.py run (in <run dir>/checkpoints/)")
    return ckpt.parent.parent


@dataclass
class Resume:
    """What is resumed: the run directory, the checkpoint, its step, epoch and end (None: written during training)."""

    run: Path
    ckpt: Path
    step: int
    epoch: int
    end: str | None


def run_id_of(run: Path) -> str | None:
    """The run id recorded in a run's config.yaml (None for runs of earlier mflow versions)."""
    return (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("run_id")


def _candidate(path: Path, run_id: str | None) -> tuple[dict | None, str | None]:
    """(checkpoint, None) if path can resume the run run_id, else (None, why not)."""
    try:
        ck = read_checkpoint(path)
    except CheckpointError as e:
        return None, first_sentence(str(e).replace(str(path), "").lstrip(": ")) or "unreadable"
    if ck.get("mflow", {}).get("finished"):
        return None, "written by finish.py (no optimizer state)"
    owner = (ck.get("run") or {}).get("id")
    if run_id is not None and owner is not None and owner != run_id:
        return None, f"written by another run ({owner}, this run is {run_id})"
    return ck, None


def as_resume(run: Path, path: Path, ck: dict) -> Resume:
    return Resume(run, path, int(ck.get("global_step", 0)), int(ck.get("epoch", 0)), (ck.get("run") or {}).get("end"))


def newest_checkpoint(run: Path, log=print) -> Resume:
    """The newest valid checkpoint of the run (most steps; last.ckpt on a tie), naming the ones it skips."""
    run_id, best, skipped = run_id_of(run), None, []
    for path in sorted((run / "checkpoints").glob("*.ckpt")):
        ck, why = _candidate(path, run_id)
        if ck is None:
            skipped.append(f"{path.name} ({why})")
            continue
        key = (int(ck.get("global_step", 0)), int(ck.get("epoch", 0)), path.name == "last.ckpt")
        if best is None or key > best[0]:
            best = (key, as_resume(run, path, ck))
    for s in skipped:
        log(f"[mflow] resume: skipped {s}")
    if best is None:
        found = "; ".join(skipped) or f"no checkpoint in {run / 'checkpoints'}"
        raise ValueError(f"--resume {run}: no checkpoint of this run to resume from ({found})")
    return best[1]


def given_checkpoint(ckpt: Path) -> Resume:
    """The checkpoint of --ckpt_path, refused unless it is a valid checkpoint of its run."""
    if not ckpt.is_file():
        raise ValueError(f"--ckpt_path {ckpt}: no such checkpoint file")
    run = run_of_checkpoint(ckpt)
    ck, why = _candidate(ckpt, run_id_of(run))
    if ck is None:
        raise ValueError(f"--ckpt_path {ckpt} cannot resume {run}: {why}")
    return as_resume(run, ckpt, ck)


def check_still_newest(resumed: Resume) -> None:
    """Called once the run directory is locked: refuse when the chosen checkpoint changed since it was chosen (the
    run it resumes was still writing then), so that a resume never continues from a stale state."""
    ck, _ = _candidate(resumed.ckpt, run_id_of(resumed.run))
    if ck is None or int(ck.get("global_step", 0)) != resumed.step:
        raise ValueError(f"{resumed.ckpt} changed while this run was starting (the run was still writing it): "
                         f"run the same command again to resume from its new state")


def _same_folder(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def changed_settings(config: Path, opts: list[tuple[str, str | None]], settings) -> list[str]:
    """The options of opts that change the run's saved settings (an option repeating its value is no change):
    ``settings(argv)`` gives the resolved settings of a command line as a flat dict."""
    if not opts:
        return []
    saved, asked = settings(["--config", str(config)]), settings(["--config", str(config), *as_argv(opts)])
    ignored = SAFE_ON_RESUME | {"config", "run_dir", "resume", "ckpt_path", "trainer.default_root_dir", "run_id"}
    keys = sorted(k for k in saved.keys() | asked.keys() if saved.get(k) != asked.get(k) and k not in ignored)
    return [k.replace(".init_args.", ".") for k in keys]


def resume_arguments(argv: list[str], settings=None, log=print) -> tuple[list[str], Resume | None]:
    """argv rewritten for a resumed run (its config, directory and checkpoint, then the safe overrides), and what
    is resumed; argv unchanged and None when nothing is resumed. ``settings`` (see :func:`changed_settings`)
    lets options that repeat the run's own values through; without it every other option is refused."""
    opts = parse_options(argv)
    keys = dict(opts)
    if "resume" not in keys and "ckpt_path" not in keys:
        return argv, None
    if "resume" in keys and "ckpt_path" in keys:
        raise ValueError("give --resume RUN_DIR or --ckpt_path CHECKPOINT, not both")
    if "overwrite" in keys:
        raise ValueError("--overwrite starts a new run in place of the old one; it does not go with --resume / --ckpt_path")
    if "resume" in keys:
        if not keys["resume"]:
            raise ValueError("--resume needs the run directory: --resume runs/<run>")
        run = Path(keys["resume"])
        if not (run / "config.yaml").is_file() and not (run / "checkpoints").is_dir():
            raise ValueError(f"--resume {run}: there is no run there to resume (was the run started there?)")
    else:
        run = run_of_checkpoint(Path(keys["ckpt_path"] or ""))
    config = run / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{run} has no config.yaml: the run's settings are unknown, so it cannot be resumed")
    here = [(k, v) for k, v in opts if k in ("run_dir", "trainer.default_root_dir") and v and _same_folder(v, run)]
    other = [(k, v) for k, v in opts if k not in SAFE_ON_RESUME | {"resume", "ckpt_path"} and (k, v) not in here]
    fixed = sorted(k for k, _ in other if k in ("run_dir", "trainer.default_root_dir", "run_id"))
    rest = [o for o in other if o[0] not in fixed]
    refused = fixed + ([k for k, _ in rest] if settings is None else changed_settings(config, rest, settings))
    if refused:
        raise ValueError(
            f"a resumed run keeps its own settings ({config}); {', '.join('--' + k for k in refused)} cannot change "
            f"on resume (allowed: {', '.join('--' + k for k in sorted(SAFE_ON_RESUME))}). Start a new run to change them"
        )
    res = newest_checkpoint(run, log) if "resume" in keys else given_checkpoint(Path(keys["ckpt_path"]))
    safe = as_argv([o for o in opts if o[0] in SAFE_ON_RESUME])
    return ["--config", str(config), *safe, f"--ckpt_path={res.ckpt}", f"--run_dir={run}"], res


def study_run_arguments(run: Path, new: list[str]) -> list[str]:
    """train.py's arguments for a study's (or benchmark's) run in ``run``, resumable after a kill: ``new`` (a new run's
    arguments, naming --run_dir=run) for a fresh directory; the same with --overwrite for a run killed before its first
    checkpoint (there is nothing to resume, so it starts afresh); once it has a last.ckpt, ``--resume run`` with the
    options of ``new`` that a resume may take (SAFE_ON_RESUME)."""
    if (run / "checkpoints" / "last.ckpt").exists():
        return ["--resume", str(run), *as_argv([o for o in parse_options(new) if o[0] in SAFE_ON_RESUME])]
    return [*new, "--overwrite"] if (run / "config.yaml").exists() else list(new)
