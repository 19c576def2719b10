"""The command line of benches that read the protocol table's finished runs
(``WORK/seed{s}/{policy}`` checkpoints beside ``WORK/seed{s}/data``) without training anything."""
from __future__ import annotations

import argparse
from pathlib import Path

from provenance import RESULTS


def seed_list(text: str) -> list[int]:
    """``--seeds`` as argparse's ``type``: "0,1,2" -> [0, 1, 2]; anything else is a usage error that names it."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(s.isdigit() for s in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated non-negative integers, e.g. 0,1,2")
    return [int(s) for s in parts]


def parser(doc: str, policies: str, policies_help: str, name: str, name_help: str = "") -> argparse.ArgumentParser:
    """``--work --seeds --policies --results --name``; the bench adds its own options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--work", required=True, help="directory of the protocol table's runs (WORK/seed{s}/...)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2")
    p.add_argument("--policies", default=policies, help=policies_help)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default=name, help=f"result file name (RESULTS/NAME.json){name_help}")
    return p


def checkpoints(p: argparse.ArgumentParser, args, always: tuple[str, ...] = ()) -> tuple[Path, list[int], list[str]]:
    """(work, seeds, policies) with ``always`` first; exits with the missing checkpoints named."""
    work = Path(args.work)
    seeds = args.seeds
    policies = list(dict.fromkeys([*always, *(x for x in args.policies.split(",") if x)]))
    missing = [str(work / f"seed{s}" / pol) for s in seeds for pol in policies
               if not (work / f"seed{s}" / pol / "manifest.json").is_file()]
    if missing:
        p.error("no checkpoint at " + ", ".join(missing) + " (run bench/protocol_table.py with this --work first)")
    return work, seeds, policies
