"""`bismap` command line: one subcommand per user-facing tool.

Subcommands live in their own modules (`cli/<name>.py`) exposing `add_parser(subparsers)`;
this file only dispatches and turns input errors and OS errors (disk full, permissions) into
one-line messages.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bismap.io import InputError, os_error_in, os_error_message

SUBCOMMANDS = ("synth", "evaluate", "predict", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    from bismap import __version__

    parser = argparse.ArgumentParser(prog="bismap", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bismap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"bismap.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        print(f"bismap {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # disk full, permission denied, read-only fs, I/O error: one line, no traceback
        os_err = os_error_in(e)
        if os_err is None:
            raise
        print(f"bismap {args.command}: error: {os_error_message(os_err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
