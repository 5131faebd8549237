"""`segany` command line: one sub-command per module in this package.

Each command module defines ``add_parser(subparsers)`` (registering its options and ``--help`` text) and
``run(args) -> int``. Modules are imported lazily so that ``segany segment`` does not pay for Ray or the web
server's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segany", description="Segment Anything, the whole system.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        mod = importlib.import_module(f"segany.cli.{module}")
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mod = importlib.import_module(f"segany.cli.{COMMANDS[args.command]}")
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
