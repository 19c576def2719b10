"""``rlhf-ray``: one subcommand per stage.

Each subcommand lives next to the code it drives and exposes
``register(subparsers)`` which adds its parser and sets ``func``; the training stages'
subcommands come from the stage registry (:mod:`rlhf_ray.stages.registry`), so a stage
registered by another package (PPO, from ``actors``) gets its command without this module
naming it. Expected user
errors (bad config, bad data, bad checkpoint) exit with code 2 and one clear
line on stderr; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-ray",
        description="Ray-distributed RLHF for whole-page recommendation: "
        "data -> pretrain -> sft -> reward -> ppo / lpo -> eval -> serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from rlhf_ray import pipeline
    from rlhf_ray.data import cli as data_cli
    from rlhf_ray.report import cli as report_cli
    from rlhf_ray.serve import cli as serve_cli
    from rlhf_ray.stages import cli as stages_cli
    from rlhf_ray.stages import reward_cli
    from rlhf_ray.tune import cli as tune_cli

    mods = (data_cli, stages_cli, pipeline, reward_cli, tune_cli, report_cli, serve_cli)
    for mod in mods:  # stages_cli: one command per stage
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. SIGTERM (Kubernetes, systemd, ``kill``) takes the Ctrl-C path
    (:func:`rlhf_ray.rayutil.sigterm_unwinds`): the Ray processes the command started (GCS,
    raylet, dashboard and runtime-env agents, workers, Serve replicas) stop with it."""
    from rlhf_ray.errors import UserError
    from rlhf_ray.rayutil import Terminated, sigterm_restore, sigterm_unwinds

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = sigterm_unwinds()
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"rlhf-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated: shutting down", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        sigterm_restore(previous)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
