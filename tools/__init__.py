"""Command-line tools (``python -m tools.NAME``): argument parsing and printing over the library packages.

Importing the package quiets third-party output that tells mvlift's users nothing they can act on (each only when the
user has not chosen otherwise through the same environment variable):

- transformers / diffusers advisories (``CLIPImageProcessor`` without torchvision, ``accelerate`` not installed) and
  their weight-loading progress bars: ``TRANSFORMERS_VERBOSITY`` / ``DIFFUSERS_VERBOSITY`` = error,
  ``HF_HUB_DISABLE_PROGRESS_BARS`` = 1;
- Lightning's advertisement lines ("Tip: ... litlogger"), the deprecation warning its own ``_pytree`` module raises
  on torch >= 2.10, and its note that modules are in eval mode at the start of training (the diffusion module's frozen
  VAE and image encoder are, on purpose).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence

for _name, _value in {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                      "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
    os.environ.setdefault(_name, _value)

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
# the diffusion module's VAE and CLIP image encoder are frozen and kept in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in record.getMessage()


for _logger in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_logger).addFilter(_DropAdvertisements())


def log_to_stderr(fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """INFO and above on standard error, unless the program (or a test) configured logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=fmt)


def number(kind: type = float, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` for a numeric option: ``kind`` (int or float), finite, within [``minimum``, ``maximum``]
    (either may be None); anything else is refused at parse time, naming the option and the value (``nan``, ``inf``,
    out of range), exit code 2."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = (f"in [{minimum:g}, {maximum:g}]" if minimum is not None and maximum is not None else
                      f">= {minimum:g}" if minimum is not None else f"<= {maximum:g}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def find_configs(argv: Sequence[str], options: Sequence[str] = ("-c", "--config")) -> list[str]:
    """``argv`` with the config file of each of ``options`` (``-c X``, ``--config=X``) that is not there relative to
    the working directory replaced by the shipped config of that name, when there is one
    (:func:`datamodules.data_config.find_config`: ``recipes/X.yaml`` or ``configs/recipes/X.yaml`` from any folder).
    Values that are not file names (inline YAML, class names) pass unchanged."""
    from datamodules.data_config import find_config

    def resolve(value: str) -> str:
        if not value.endswith(CONFIG_SUFFIXES) or "\n" in value:
            return value
        found = find_config(value)
        return value if str(found) == value else str(found)

    out, args = [], list(argv)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and name in options:
            out.append(f"{name}={resolve(value)}")
        elif i > 0 and args[i - 1] in options:
            out.append(resolve(arg))
        else:
            out.append(arg)
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The tools' help: the module docstring as written, and each option's default."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: a YAML mapping of the parser's long options (``guidance: 2.0``, ``ckpt: [a=PATH, ...]``,
    ``ema: true``), read as if typed before the command line, so every value is checked as typed and the command
    line's own options win (list options such as ``--ckpt`` add to the file's)."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML of these options (long names, - or _); the command line's options win")


def config_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with its ``--config FILE`` replaced by the options the file holds (:func:`add_config_option`);
    ValueError naming the file and the key for a key that is no option or a value of the wrong shape."""
    import yaml

    args, path = [], None
    it = iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
        elif a.startswith("--config="):
            path = a.partition("=")[2]
        else:
            args.append(a)
    if path is None:
        return list(argv)
    try:
        data = yaml.safe_load(open(path).read())  # noqa: SIM115 - read at once
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: must hold a mapping of option: value")  # noqa: TRY004 - bad file content, not a bad argument type
    tokens: list[str] = []
    for key, value in data.items():
        opt = "--" + str(key).replace("_", "-")
        action = parser._option_string_actions.get(opt) or parser._option_string_actions.get("--" + str(key))
        if action is None or opt == "--config":
            raise ValueError(f"--config {path}: unknown option {key!r} (see --help)")
        if isinstance(action, argparse.BooleanOptionalAction):
            tokens.append(opt if value else "--no-" + opt[2:])
        elif action.nargs == 0:  # store_true / store_false flags
            if not isinstance(value, bool):
                raise ValueError(f"--config {path}: {key!r} is a flag: true or false, got {value!r}")  # noqa: TRY004
            if value == isinstance(action, argparse._StoreTrueAction):
                tokens.append(opt)
        elif isinstance(value, list):
            if isinstance(action, argparse._AppendAction):
                for v in value:
                    tokens += [opt, str(v)]
            elif action.nargs in ("+", "*"):
                tokens += [opt, *map(str, value)]
            else:
                raise ValueError(f"--config {path}: {key!r} takes one value, got a list")
        else:
            tokens += [opt, str(value)]
    return tokens + args


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | None:
    """``parser.parse_args(argv)``, or None when argparse refused an argument (its one-line usage error is printed):
    ``main`` then returns 2, as for its other errors, instead of raising SystemExit. ``--help`` still exits. A
    ``--config FILE`` (:func:`add_config_option`) is read first."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--config" in parser._option_string_actions:
        try:
            argv = config_argv(parser, argv)
        except ValueError as e:
            parser.print_usage(sys.stderr)
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
            return None
    try:
        args = parser.parse_args(argv)
        if "--config" in parser._option_string_actions:
            del args.config  # read already: the tools see the options it held
        return args
    except SystemExit as e:
        if e.code in (0, None):
            raise
        return None
