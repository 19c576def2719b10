"""The command line of benches that read the protocol table's finished runs
(``WORK/seed{s}/{policy}`` checkpoints beside ``WORK/seed{s}/data``) without training anything."""
from __future__ import annotations

import argparse
from pathlib import Path

from provenance import RESULTS


def parser(doc: str, policies: str, policies_help: str, name: str, name_help: str = "") -> argparse.ArgumentParser:
    """``--work --seeds --policies --results --name``; the bench adds its own options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--work", required=True, help="directory of the protocol table's runs (WORK/seed{s}/...)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--policies", default=policies, help=policies_help)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default=name, help=f"result file name (RESULTS/NAME.json){name_help}")
    return p


def checkpoints(p: argparse.ArgumentParser, args, always: tuple[str, ...] = ()) -> tuple[Path, list[int], list[str]]:
    """(work, seeds, policies) with ``always`` first; exits with the missing checkpoints named."""
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    policies = list(dict.fromkeys([*always, *(x for x in args.policies.split(",") if x)]))
    missing = [str(work / f"seed{s}" / pol) for s in seeds for pol in policies
               if not (work / f"seed{s}" / pol / "manifest.json").is_file()]
    if missing:
        p.error("no checkpoint at " + ", ".join(missing) + " (run bench/protocol_table.py with this --work first)")
    return work, seeds, policies
