"""One option style for every mflow entry point: snake_case, as train.py's LightningCLI spells them.

evaluate.py, finish.py, ``python -m mflow.data``, ``python -m mflow.bo``, the studies and the benchmarks build their
command lines with :class:`Parser` (an argparse.ArgumentParser): options are ``--snake_case`` (``--ckpt_path``,
``--n_test``, ``--num_threads``, ``--out_dir``), booleans that default to off are flags, and an old spelling is
refused in one line naming the new one, before anything runs:

    evaluate.py: error: --n-test is now --n_test (mflow's options are snake_case, like train.py's)

Old spellings are every kebab-case form of a current option (``--n-test`` for ``--n_test``), the options renamed
everywhere (:data:`RENAMED`: ``--ckpt`` -> ``--ckpt_path``, ``--threads`` -> ``--num_threads``) and those a
parser names itself (``renamed=``). Abbreviations are off: ``--n`` is not ``--n_points``.

:func:`add_num_threads` gives an entry point the shared ``--num_threads`` (default: the fair share of the
machine, mflow.cli.threads); :func:`typed_choices` lists the choices of the settings train.py builds (its
``--help`` epilog).
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing

RENAMED = {"--ckpt": "--ckpt_path", "--threads": "--num_threads", "--no-normalize": "--normalize=false"}


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser in mflow's option style (module doc). ``renamed``: {old option: new spelling} of this
    entry point, beside :data:`RENAMED` and the kebab forms."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.renamed = {**RENAMED, **(renamed or {})}

    def add_argument(self, *names, **kwargs):
        for n in names:
            if n.startswith("--") and "-" in n[2:]:
                raise ValueError(f"option {n} is not snake_case: mflow's options are spelled like train.py's")
        return super().add_argument(*names, **kwargs)

    def new_spelling(self, option: str) -> str | None:
        """The current spelling of an old option of this parser (None: not an old option)."""
        if not option.startswith("--") or option in self._option_string_actions:
            return None
        snake = "--" + option[2:].replace("-", "_")
        for old in (option, snake):  # a renamed option, in either spelling
            new = self.renamed.get(old)
            if new is not None and new.split("=", 1)[0] in self._option_string_actions:
                return new
        return snake if snake != option and snake in self._option_string_actions else None

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        for token in argv:
            if token == "--":
                break
            new = self.new_spelling(token.split("=", 1)[0])
            if new is not None:
                self.exit(2, f"{self.prog}: error: {token.split('=', 1)[0]} is now {new} (mflow's options are "
                             "snake_case, like train.py's)\n")
        return super().parse_known_args(argv, namespace)


def boolean(text: str) -> bool:
    """true / false (train.py's spelling of booleans)."""
    t = str(text).lower()
    if t not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return t == "true"


def add_num_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: the machine's cores shared among the mflow runs on it, "
                             "mflow.cli.threads)")


def set_threads(args) -> int:
    """Register the run and set torch's threads (``args.num_threads`` wins; else the fair share); returns them."""
    from .threads import configure_threads

    return configure_threads(getattr(args, "num_threads", None))


# ----------------------------------------------------------------------------- the choices train.py lists
def _choices(annotation) -> tuple | None:
    """The choices of a Literal annotation (also inside Optional / dict keys), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        c = _choices(arg)
        if c is not None:
            return c
    return None


def typed_choices(classes) -> str:
    """One line per setting with named choices: ``  Class.setting: a | b | c`` (train.py's --help epilog)."""
    lines = []
    for cls in classes:
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: list the class without it
            hints = {}
        params = inspect.signature(cls.__init__).parameters
        lines += [f"  {cls.__name__}.{name}: {' | '.join(map(str, c))}" for name in params
                  if (c := _choices(hints.get(name))) is not None]
    return "\n".join(lines)


def help_formatter():
    """jsonargparse's help formatter, with the description and epilog printed as written (one line per choice)."""
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def _fill_text(self, text, width, indent):
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return Formatter


def train_choices() -> str:
    """The choices of every class train.py builds by default or from conf/ (models, data, kernels, callbacks)."""
    from mflow.callbacks import NTKDrift
    from mflow.data.clustered import ClusteredDataModule
    from mflow.data.datamodule import CYDataModule
    from mflow.flows import KernelFlow, NetworkFlow

    return ("choices of the typed settings (--model.help CLASS, --data.help CLASS list every setting of a class; "
            "loss_weights takes the loss terms as keys):\n"
            + typed_choices((NetworkFlow, KernelFlow, CYDataModule, ClusteredDataModule, NTKDrift)))


_LITERAL = re.compile(r'Parser key "([^"]+)":\s*Expected a typing\.Literal\[([^\]]*)\]\.\s*Got value:\s*([^\n]*)')
_OUTER = re.compile(r'\s*Parser key "([^"]+)"')
RENAMED_VALUES = {("pd_policy", "raise"): "pd_policy 'raise' is now called 'stop' (one vocabulary for every flow): "
                                          "use --model.pd_policy=stop"}


def choice_error(message: str) -> str | None:
    """jsonargparse's refusal of a value outside a Literal's choices as one line, ``<key> must be one of <choices>;
    got <value>`` (an old value names its new one); None for any other message."""
    m = _LITERAL.search(message)
    if m is None:
        return None
    key, value = m.group(1), m.group(3).strip()
    choices = [c.strip().strip("'\"") for c in m.group(2).split(",")]
    hint = RENAMED_VALUES.get((key, value))
    if hint is not None:
        return hint
    outer = _OUTER.match(message)
    if outer is not None and outer.group(1) != key:
        key = f"{outer.group(1)}.{key}"
    return f"{key} must be one of {', '.join(choices)}; got {value!r}"
