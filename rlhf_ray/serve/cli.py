"""``rlhf-ray serve``: run the ranker as a Ray Serve application.

    rlhf-ray serve --checkpoint runs/sft --data data/ml-100k            # http://127.0.0.1:8000
    rlhf-ray serve --checkpoint runs/sft --replicas 2 --max-batch-size 32 --batch-wait-ms 5
    rlhf-ray serve --checkpoint runs/sft --ingress haproxy              # Ray's HAProxy ingress: ~1 ms per request
    rlhf-ray serve --checkpoint runs/sft --print-config > serve.yaml    # for serve deploy / RayService
    curl -s localhost:8000/v1/rank -H 'content-type: application/json' -d '{"user_id": "196", "k": 10}'

The checkpoint (hashes) and the data (fingerprint, same catalogue) are checked
before Ray starts: a problem exits with code 2 and one line naming it.
"""
from __future__ import annotations

import argparse
import sys
import time

from rlhf_ray.cliutil import add_config_args, add_config_file_arg, load_config
from rlhf_ray.config import ConfigError, ServeConfig
from rlhf_ray.errors import UserError


def preflight(cfg: ServeConfig) -> str:
    """Check the checkpoint and the user data without Ray; return the checkpoint id."""
    import pandas as pd

    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.serve.ranker import UserHistories, check_users

    if not cfg.checkpoint:
        raise ConfigError("checkpoint: required (--checkpoint DIR)")
    manifest = verify_checkpoint(cfg.checkpoint)
    if cfg.data:
        items = pd.read_parquet(f"{cfg.checkpoint}/catalog.parquet", columns=["item"])["item"].astype(str).tolist()
        n_user_tokens = int((manifest.get("vocab") or {}).get("n_users", 0))
        check_users(items, n_user_tokens, UserHistories.load(cfg.data), cfg.checkpoint)
    return manifest["id"]


def _serve(args: argparse.Namespace) -> int:
    cfg: ServeConfig = load_config(ServeConfig, args)  # type: ignore[assignment]
    ckpt_id = preflight(cfg)
    from rlhf_ray.serve.app import serve_config

    if args.print_config:
        import yaml

        print(yaml.safe_dump(serve_config(cfg), sort_keys=False), end="")
        return 0

    from ray import serve

    from rlhf_ray.serve.app import deploy, init_serve_ray

    ray = init_serve_ray(cfg, num_cpus=cfg.num_cpus or None)
    stop = True  # shut Serve and Ray down on the way out (not for --no-blocking)
    try:
        try:
            deploy(cfg)
        except RuntimeError as e:
            raise UserError(f"the ranker did not start: {e}") from None
        url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        print(f"serving {ckpt_id} at {url}/v1/rank  (docs: {url}/docs, model: {url}/v1/model)", flush=True)
        if not cfg.blocking:
            stop = False
            if not cfg.address:
                print("note: --no-blocking with an embedded Ray: the server stops when this command exits",
                      file=sys.stderr)
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("interrupted: shutting down", file=sys.stderr)
        return 0
    finally:
        if stop:
            serve.shutdown()
            ray.shutdown()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a checkpoint over HTTP with Ray Serve",
        description="Serve pages from a checkpoint: POST /v1/rank, GET /v1/model, /healthz, /docs. "
                    "Import path for serve run / RayService: rlhf_ray.serve.app:build_app.")
    add_config_file_arg(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the Serve config (serve deploy / RayService serveConfigV2) and exit")
    add_config_args(p, ServeConfig)
    p.set_defaults(func=_serve)
