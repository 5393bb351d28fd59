"""The `kdsweep` command: train | plan | run | status | report."""

from __future__ import annotations

import argparse
import sys

from . import train_cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kdsweep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
