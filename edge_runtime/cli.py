"""`edge-runtime`: a thin command line over the library.

Each area keeps its own sub-commands next to its code and exposes
`register(subparsers)`; this module only assembles them and turns
`EdgeRuntimeError` into a one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from edge_runtime.errors import EdgeRuntimeError

# Modules that contribute sub-commands, each with `register(subparsers)`.
COMMAND_MODULES = (
    "edge_runtime.runtime_cli",
    "edge_runtime.conversion.cli",
    "edge_runtime.audio.cli",
    "edge_runtime.rpc.cli",
    "edge_runtime.hub.cli",
    "edge_runtime.package.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Offline, on-device runtime for Google's Gemma models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # An area whose optional dependencies are missing simply adds no commands.
            if exc.name and exc.name.startswith("edge_runtime"):
                continue
            raise
        module.register(subparsers)
    for sub in subparsers.choices.values():
        # -v after the command as well as before it; SUPPRESS keeps a -v given before the command
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show llama.cpp and debug logs")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup (temporary files, models) runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (called from a library user's thread)
        previous = None
    try:
        return int(args.func(args) or 0)
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
