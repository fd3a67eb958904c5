"""Progress of long phases outside the training loop (sampling, clustering): a tqdm bar on a terminal, and in a
log (no terminal) a line now and then, so that a long phase is never silent. No Lightning here: the lower floors use it.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, every_s: float = 30.0) -> Iterator[T]:
    """Yield items; on a terminal show a tqdm bar, else print '[mflow] desc: k/total done' at most every every_s."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False)
        return
    last = time.monotonic()
    for k, item in enumerate(items, 1):
        yield item
        if k < total and time.monotonic() - last >= every_s:
            print(f"[mflow] {desc}: {k}/{total} done", flush=True)
            last = time.monotonic()
