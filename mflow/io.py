"""Atomic file writes: a killed process never leaves a half-written file at the target path.

Every file mflow writes (point sets, checkpoints, JSON, PNG) goes through :func:`atomic_write`: a temporary
``.<name>.<random>.tmp`` beside the target, fsync, rename. A process killed mid-write leaves at most that
temporary behind; :func:`remove_stale_temporaries` deletes such leftovers when the next run starts there.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temporary file beside path, fsync it, then rename it onto path.

    A writer killed at any point leaves either the old file or the new one at path, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def check_writable(path, what: str = "output folder") -> None:
    """Refuse (ValueError, one line) a folder that cannot be created or written, before any work."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {p} is a file, not a folder; choose another folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written: {p} is not writable; choose another folder")


def write_json(path, data: dict) -> Path:
    """JSON (indented; non-JSON numbers as floats), atomically."""

    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=float)

    return atomic_write(path, w)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(path, fig, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG, atomically; the figure is closed afterwards."""
    plt = pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed :func:`atomic_write` left in folder (not recursive); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_study(out, name: str, data: dict, text: str, fig) -> None:
    """A study's results, each atomically: <out>/<name>.json (data), .md (the table text), .png (the figure);
    the table is printed too."""
    out = Path(out)
    write_json(out / f"{name}.json", data)
    atomic_write(out / f"{name}.md", lambda tmp: Path(tmp).write_text(text))
    write_png(out / f"{name}.png", fig, dpi=100)
    print(text)
