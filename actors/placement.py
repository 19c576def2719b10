"""Where the PPO roles run: one shared placement group (colocated) or one per role (spread).

Colocated: ``n = max(ranks)`` bundles; rank r of a multi-rank role sits on bundle
(start + r) mod n, so the ranks of one group land on distinct bundles (distinct
GPUs on a GPU node), and single-rank roles go to the least loaded bundle. Each
bundle asks for the sum of what its actors ask (fractional CPUs/GPUs), so on a
2-core box the default (5 actors: policy, critic, reference, reward, rollout, x 0.25 CPU)
fits in one bundle of 1.25 CPUs; a 2-rank policy group spreads them over two bundles (0.75 + 0.75).

Spread: no shared group; each :class:`~actors.group.ModelGroup` makes its own
with ``ranks`` bundles and the configured strategy (PACK or SPREAD across nodes).

Inside a reservation: when the caller already runs in a placement group whose bundles after
its own first one are exactly the roles' bundles (a Ray Tune trial started with
``PlacementGroupFactory([caller, *trial_bundles(cfg)])``, as ``rlhf-ray tune`` does), the
roles go there instead of into a new group, so concurrent trials each keep to their own
reservation and never wait on one another's actors. A caller whose placement group holds only
its own bundle (a trainable given no role bundles) gets a new group for the roles, as outside Tune.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from actors.group import Placement, wait_placement
from rlhf_ray.config import PPOConfig
from rlhf_ray.errors import UserError


@dataclass
class RoleSpec:
    role: str
    ranks: int
    num_cpus: float  # per actor
    num_gpus: float  # per actor
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor


@dataclass
class Layout:
    placements: dict[str, Placement | None]  # role -> shared bundles, or None (the group makes its own)
    pg: object | None  # the shared placement group (None when spread)
    bundles: list[dict]  # resources of each shared bundle

    def remove(self) -> None:
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None


def colocated_bundles(roles: list[RoleSpec]) -> tuple[list[dict], dict[str, list[int]]]:
    """Bundle resources and each role's bundle index per rank (pure; see module docstring)."""
    n = max(r.ranks for r in roles)
    load: list[dict[str, float]] = [{"CPU": 0.0, "GPU": 0.0} for _ in range(n)]
    assign: dict[str, list[int]] = {}
    for spec in sorted(roles, key=lambda s: -s.ranks):  # multi-rank groups first
        start = min(range(n), key=lambda b: (load[b]["CPU"] + load[b]["GPU"], b))
        idx = [(start + r) % n for r in range(spec.ranks)]
        for b in idx:
            for k, v in {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}.items():
                load[b][k] = load[b].get(k, 0.0) + v
        assign[spec.role] = idx
    bundles = []
    for b in load:
        res = {k: round(v, 4) for k, v in b.items() if v > 0}
        bundles.append(res or {"CPU": 0.01})  # Ray refuses an empty bundle
    return bundles, assign


def role_specs(cfg: PPOConfig) -> list[RoleSpec]:
    """The PPO roles a config asks for: ranks and per-actor CPUs/GPUs/custom resources."""
    return [RoleSpec("policy", cfg.policy.ranks, cfg.policy.num_cpus, cfg.policy.num_gpus, cfg.policy.resources),
            RoleSpec("critic", cfg.critic.ranks, cfg.critic.num_cpus, cfg.critic.num_gpus, cfg.critic.resources),
            RoleSpec("reference", 1, cfg.reference.num_cpus, cfg.reference.num_gpus, cfg.reference.resources),
            RoleSpec("reward", 1, cfg.reward.num_cpus, cfg.reward.num_gpus, cfg.reward.resources),
            RoleSpec("rollout", cfg.rollout.actors, cfg.rollout.num_cpus, cfg.rollout.num_gpus, cfg.rollout.resources)]


def trial_bundles(cfg: PPOConfig) -> list[dict]:
    """The bundles PPO's actors need beside the process that drives them (a Tune trial's)."""
    if not cfg.colocate:
        raise UserError("ppo.colocate: false places each role in a placement group of its own, outside a "
                        "sweep trial's reservation; sweeps need ppo.colocate: true")
    return colocated_bundles(role_specs(cfg))[0]


def _covers(have: dict, need: dict) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _enclosing(bundles: list[dict]):
    """The placement group the caller runs in, if its bundles 1.. are ``bundles`` (see module doc)."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is None:
        return None
    specs = pg.bundle_specs
    if len(specs) == 1:  # the caller reserved only itself (e.g. a plain Tune trainable): roles go outside
        return None
    if len(specs) != 1 + len(bundles) or not all(_covers(h, n) for h, n in zip(specs[1:], bundles)):
        raise UserError(f"PPO runs inside a placement group with bundles {specs}, but its roles need "
                        f"[<driver>, *{bundles}]: reserve them with trial_bundles(cfg) (rlhf-ray tune does)")
    return pg


def plan(roles: list[RoleSpec], colocate: bool, strategy: str = "PACK", timeout_s: float = 300.0) -> Layout:
    """Create the shared placement group (colocated) and say where each role's ranks go."""
    if not colocate:
        return Layout({r.role: None for r in roles}, None, [])
    from ray.util.placement_group import placement_group

    bundles, assign = colocated_bundles(roles)
    outer = _enclosing(bundles)
    if outer is not None:  # a Tune trial's reservation: bundle 0 is the trial's own
        return Layout({role: Placement(outer, [b + 1 for b in idx]) for role, idx in assign.items()}, None, bundles)
    pg = placement_group(bundles, strategy=strategy, name=f"rlhf-ray-ppo-{uuid.uuid4().hex[:6]}")
    wait_placement(pg, f"PPO roles colocated ({bundles}, {strategy})", timeout_s)
    return Layout({role: Placement(pg, idx) for role, idx in assign.items()}, pg, bundles)
