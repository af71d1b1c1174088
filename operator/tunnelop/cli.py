"""The `tunnelop` command line: one entry point for the operator and its relay agent."""

from __future__ import annotations

import argparse
import sys

from tunnelop import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelop",
        description="Run a tunnel-relay service for frp declaratively on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"tunnelop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"tunnelop {__version__}")
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
