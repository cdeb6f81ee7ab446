"""Quiet by default, verbose on request: one place that sets up logging for every CLI, and the
command-line conventions the five glm-* tools share.

Our own logger speaks at INFO (one line per meaningful event); third-party libraries (megatron-core,
torch, sentencepiece) are held at ERROR and their non-actionable warnings (absent apex/TE,
deprecations, advice that only applies to GPUs) are hidden unless --verbose.

Every tool builds its parser with `add_verbose_option` (or `add_flag_anywhere`): `--verbose` is
accepted before and after the subcommand with the same effect, and `--help` of the tool and of each
subcommand shows every option's default (`HelpFormatter`). Exit codes: 0 ok, 2 bad input or usage
(argparse's own code), others as each tool's docstring documents.
"""

from __future__ import annotations

import argparse
import functools
import logging
import warnings

_NOISE = (
    r".*(Apex|Transformer Engine).*",
    r".*cuda_graph_scope.*|.*full scope is deprecated.*",
    # megatron's pipeline schedules read .grad of non-leaf activations by design.
    r".*\.grad attribute of a Tensor that is not a leaf.*",
    # The launcher sets CUDA_DEVICE_MAX_CONNECTIONS where it matters (GPUs); on CPU it is noise.
    r".*CUDA_DEVICE_MAX_CONNECTIONS.*",
)


def configure_logging(name: str, verbose: bool = False, quiet: bool = False) -> logging.Logger:
    """Return the CLI's logger, printing `name: message` to stderr."""
    if not verbose:
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("megatron").setLevel(logging.ERROR)
    else:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO))
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    return logger


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (module docstrings), and "(default: X)" after every option whose
    default means something: not for flags, None, empty values, or help that already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is argparse.SUPPRESS or default in ([], "")
                or isinstance(default, bool) or action.nargs == 0):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class _Subcommands(argparse._SubParsersAction):  # the class add_subparsers instantiates
    """Subcommand parsers that share the main parser's help style and its anywhere-flags."""

    def __init__(self, *args, flags, **kwargs):
        super().__init__(*args, **kwargs)
        self._flags = flags

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        parser = super().add_parser(name, **kwargs)
        for option, help_text in self._flags:
            # SUPPRESS: unless given after the subcommand, the main parser's value stands
            parser.add_argument(option, action="store_true", default=argparse.SUPPRESS, help=help_text)
        return parser


def add_flag_anywhere(parser: argparse.ArgumentParser, option: str, help: str) -> None:
    """A store_true `option` accepted before and after the subcommand, with one effect. Call it
    before `parser.add_subparsers`; it also gives the parser and its subcommands `HelpFormatter`."""
    if parser._subparsers is not None:
        raise ValueError(f"add {option} before the subcommands")
    parser.add_argument(option, action="store_true", help=help)
    if parser.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = HelpFormatter
    flags = getattr(parser, "_glm_flags_anywhere", None)
    if flags is None:
        flags = parser._glm_flags_anywhere = []
        parser.register("action", "parsers", functools.partial(_Subcommands, flags=flags))
    flags.append((option, help))


def add_verbose_option(parser: argparse.ArgumentParser, help: str = "debug logs and third-party warnings") -> None:
    """`--verbose` before or after the subcommand (see add_flag_anywhere)."""
    add_flag_anywhere(parser, "--verbose", help)
