"""The `tunnelop` command line: one entry point for the operator and its relay agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunnelop import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelop",
        description="Run a tunnel-relay service for frp declaratively on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"tunnelop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    crds = sub.add_parser(
        "crds",
        help="write the CustomResourceDefinitions generated from the API models",
        description=(
            "Write one CustomResourceDefinition per kind to OUTPUT_DIR, generated from the "
            "API models. With --check, write nothing and fail if the files differ."
        ),
    )
    crds.add_argument(
        "--output-dir",
        type=Path,
        default=Path("crds"),
        help="directory of the CRD files (default: crds)",
    )
    crds.add_argument(
        "--check",
        action="store_true",
        help="exit 1 and print a diff if the files are not what the models generate",
    )
    return parser


def run_crds(output_dir: Path, check: bool) -> int:
    # Imported here so that `tunnelop version` stays fast and free of the API's imports.
    from tunnelop.api import crdgen

    if check:
        diff = crdgen.diff_crds(output_dir)
        if diff:
            sys.stdout.write(diff)
            print(
                f"\n{output_dir} is out of date with the API models; run `tunnelop crds "
                f"--output-dir {output_dir}`",
                file=sys.stderr,
            )
            return 1
        print(f"{output_dir} is up to date", file=sys.stderr)
        return 0
    for path in crdgen.write_crds(output_dir):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"tunnelop {__version__}")
        return 0
    if args.command == "crds":
        return run_crds(args.output_dir, args.check)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
