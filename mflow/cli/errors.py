"""Errors a user can fix, as one line: what is wrong and what to do; the traceback only on request.

mflow signals such errors as ValueError (bad settings, refused files: NotCalabiYauError, PointSetError,
CheckpointError, EvaluationError, NTKTooLarge, ...), FloatingPointError (a diverging run,
NotPositiveDefiniteError) or OSError (missing files). Libraries in between (jsonargparse, Lightning) may wrap
them; the message shown is the outermost such error of the chain. Anything else is a bug and keeps its
traceback. Set MFLOW_TRACEBACK=1 to see the traceback of every error.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

TRACEBACK_ENV = "MFLOW_TRACEBACK"
USER_ERRORS = (ValueError, FloatingPointError, OSError)


MFLOW = str(Path(__file__).resolve().parents[1])


def _raised_by_mflow(e: BaseException) -> bool:
    tb = traceback.extract_tb(e.__traceback__)
    return bool(tb) and str(Path(tb[-1].filename).resolve()).startswith(MFLOW)


def root_cause(e: BaseException) -> BaseException:
    """The error to show for e: the outermost user-type error of its chain of causes that mflow raised (a message
    written for the user), else the outermost user-type error, else e."""
    chain, seen, cur = [], set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    users = [c for c in chain if isinstance(c, USER_ERRORS)]
    return next((c for c in users if _raised_by_mflow(c)), users[0] if users else e)


def first_sentence(message: str) -> str:
    """A message's first sentence, on one line (never cut inside a sentence or a parenthesis)."""
    text, depth = " ".join(str(message).split()), 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch in ".!?" and depth <= 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg


def run(main, prog: str, argv=None) -> int:
    """Call main(argv); a user error becomes one line on stderr and exit code 2 (MFLOW_TRACEBACK=1: re-raised)."""
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user errors wrapped by other errors (jsonargparse, Lightning) count too
        cause = root_cause(e)
        if not isinstance(cause, USER_ERRORS) or os.environ.get(TRACEBACK_ENV):
            raise
        print(f"{prog}: error: {one_line(cause)}  ({TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)
        return 2
