"""``rlhf-ray``: one subcommand per stage.

Each subcommand lives next to the code it drives and exposes
``register(subparsers)`` which adds its parser and sets ``func``. Expected user
errors (bad config, bad data, bad checkpoint) exit with code 2 and one clear
line on stderr; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules with a register(subparsers); imported at parse time.
SUBCOMMANDS = [
    "rlhf_ray.data.cli",
    "rlhf_ray.stages.cli",
    "rlhf_ray.stages.lpo_cli",
    "rlhf_ray.stages.reward_cli",
    "rlhf_ray.serve.cli",
    "actors.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-ray",
        description="Ray-distributed RLHF for whole-page recommendation: "
        "data -> pretrain -> sft -> reward -> ppo / lpo -> eval -> serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlhf_ray.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"rlhf-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
