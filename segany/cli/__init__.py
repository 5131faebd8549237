"""`segany` command line: one sub-command per module in this package.

Each command module defines ``add_parser(subparsers)`` (registering its options and ``--help`` text) and
``run(args) -> int``. Modules are imported lazily so that ``segany segment`` does not pay for Ray or the web
server's imports.

Expected errors (`segany.cli.errors`: a bad prompt, image, checkpoint or embedding) end the command with one
``segany: error: ...`` line on stderr and exit status 2; ``--debug`` (before or after the command name) adds
the traceback and every detail. segany's own warnings print as one ``segany: warning: ...`` line.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from segany.cli.errors import is_expected, one_line

# command name -> module under segany.cli
COMMANDS: dict[str, str] = {
    "segment": "segment",
    "embed": "embed",
    "convert": "convert",
    "auto": "auto",
    "annotate": "annotate",
    "export-onnx": "export_onnx",
    "engine": "engine",
    "train": "train",
    "eval": "eval",
    "calibrate": "calibrate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segany", description="Segment Anything, the whole system.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the Python traceback and every detail (e.g. all mismatched checkpoint keys)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        mod = importlib.import_module(f"segany.cli.{module}")
        mod.add_parser(sub)
    for command_parser in sub.choices.values():  # `segany segment ... --debug` works too
        command_parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


# An option value that argparse would take for an option: a negative number, or a list such as -10,20.
_NEGATIVE_VALUE = re.compile(r"-\.?\d")


def _join_negative_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--point -10,20`` -> ``--point=-10,20`` for every option that takes one value.

    argparse reads a token that starts with ``-`` as an option unless it is a plain negative number, so
    ``--point -10,20`` failed with "expected one argument"; the ``=`` form is unambiguous.
    """
    takes_value: set[str] = set()
    parsers = [parser]
    while parsers:
        p = parsers.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.nargs is None:
                takes_value.update(s for s in action.option_strings if s.startswith("--"))
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + list(argv[i:])
        if token in takes_value and i + 1 < len(argv) and _NEGATIVE_VALUE.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def _details(exc: BaseException) -> str | None:
    """The ``details`` (e.g. `CheckpointError.details`) of the error or of an error it was raised from."""
    seen: BaseException | None = exc
    while seen is not None:
        details = getattr(seen, "details", None)
        if isinstance(details, str) and details:
            return details
        seen = seen.__cause__ or seen.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(parser, sys.argv[1:] if argv is None else argv))
    debug = bool(getattr(args, "debug", False))
    mod = importlib.import_module(f"segany.cli.{COMMANDS[args.command]}")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            return int(mod.run(args) or 0)
        except Exception as exc:
            if not is_expected(exc):
                raise
            details = _details(exc)
            if debug:
                traceback.print_exc()
                if details:
                    print(details, file=sys.stderr)
            hint = " (--debug shows all of it)" if details and not debug else ""
            print(f"segany: error: {one_line(exc)}{hint}", file=sys.stderr)
            return 2


def _one_line_warnings(show: Any) -> Any:
    """`warnings.showwarning` that prints segany's own warnings as ``segany: warning: ...``."""

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if category.__module__.startswith("segany"):
            print(f"segany: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


if __name__ == "__main__":
    sys.exit(main())
