"""The PPO controller (PageLLM stage 4): one loop driving the role groups.

    orch = PPOOrchestrator(cfg, sft="runs/sft", reward="runs/reward", data="data/ml-100k", out="runs/ppo")
    result = orch.run(resume=True)        # final metrics; the policy is the checkpoint at OUT

Iteration i (B = rollout_batch_size users, K = page_size slots, N = catalogue items):

 1. sync      policy -> rollout actors when the policy changed (object store; :meth:`sync_weights`)
 2. generate  users i*B .. i*B+B-1 of a seeded permutation of the train split -> Rollout (pages (B, K),
              log pi_old (B, K)), sampled with seed (seed, "rollout", i, rollout rank)
 3. score     at once, each role reading the prompts and the rollout from the object store:
              RewardScores (page (B,), items (B, K), total (B,), mix), RefLogprobs (B, K), Values (B, K)
 4. advantage a zero-CPU actor (one per run) reads those answers from the object store and
              computes KL_t, token rewards r_t = c_item item_t + 1[t = last] c_page page - beta KL_t,
              GAE(gamma, lam), whitening
              (actors.advantage, actors.experience); the Experience stays in the object store
 5. train     ppo_epochs over minibatches on the policy and critic groups (concurrently), both
              reading their rows of the prompt batch and of the Experience from the object store
 6. beta      the KL controller sees the mean per-page KL (fixed or adaptive)

What moves where (ObjectRefs between roles, :class:`actors.batching.Sharded`):

    driver  --put-->  PromptBatch (histories, user ids: O(B x history))   -> rollout, reward,
                                                                             reference, critic, policy
    rollout --------> Rollout (B, K)                                       -> reward, reference, critic,
                                                                             advantage actor
    reward, reference, critic --> (B,) / (B, K) answers                    -> advantage actor
    advantage actor -> Experience (B, K)                                   -> policy, critic
    policy rank 0 -> weights (put once)                                    -> rollout actors
    driver  <-get---  scalars only: experience stats, training stats, sync acknowledgements

The prompt tokens and the (b, N) seen-item mask are built by every rank that uses them, for its
own rows (:meth:`actors.experience.PromptBatch.prompts`); nothing of size N is made on the driver.
What the driver does fetch and put is counted (:class:`actors.ledger.Ledger`) and reported per
iteration as ``perf/driver_get_bytes`` / ``perf/driver_put_bytes`` (:attr:`PPOOrchestrator.relay`
holds the last iteration's detail).

Every ``eval_every`` iterations: validation (NDCG@10, Recall@20, tail recall, page ILD and
entropy) on rollout actor 0 and the reward-hacking monitor. Every ``save_every``: a
resumable state in OUT.state (actors.state). Logs and Ray Train / Tune reports go through
the same :class:`~rlhf_ray.stages.runlog.RunLogger` as every other stage (OUT.logs). At the
end: the policy as a ``ppo`` checkpoint at OUT.

An actor or node lost mid-run is survived up to ``max_restarts`` times: the lost role groups
are started again and the run continues from its last complete state (:mod:`actors.recovery`).
OUT and the inputs are storage locations (:mod:`rlhf_ray.storage`): paths every node sees, or URIs.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Callable

import numpy as np
import pandas as pd
import torch

from actors.advantage import AdvantageStep
from actors.batching import Sharded
from actors.critic import CriticActor
from actors.experience import PromptBatch, held_out_pages, rollout_prompts
from actors.group import ModelGroup
from actors.ledger import Ledger, Relay
from actors.monitor import WATCHED, HackingMonitor
from actors.placement import plan, role_specs
from actors.policy import PolicyActor
from actors.recovery import Recovery
from actors.reference import ReferenceActor
from actors.reward_actor import RewardActor
from actors.rollout import RolloutActor
from actors.selection import Keeper
from actors.state import RunState, read_controller, rng_state, set_rng_state, state_dir
from rlhf_ray import storage
from rlhf_ray.config import GenerationConfig, PPOConfig
from rlhf_ray.errors import CheckpointError, UserError
from rlhf_ray.losses import AdaptiveKLController, FixedKLController
from rlhf_ray.seeding import rng
from rlhf_ray.seeding import seed as derive_seed
from rlhf_ray.stages.runlog import RunLogger, log_dir, report

PHASES = ("sync", "generate", "score", "advantage", "train")
STAGE = "ppo"


def _mean_stats(per_rank: list[dict]) -> dict[str, float]:
    keys = per_rank[0].keys()
    return {k: float(np.mean([s[k] for s in per_rank])) for k in keys}


def _wait(*batches: Sharded) -> None:
    """Until every shard of ``batches`` is computed (nothing is fetched here)."""
    import ray

    refs = [r for b in batches for r in b.refs]
    ray.wait(refs, num_returns=len(refs), fetch_local=False)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaf values that differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


class PPOOrchestrator:
    ROLE_CLASSES = {"policy": PolicyActor, "critic": CriticActor, "reference": ReferenceActor,
                    "reward": RewardActor, "rollout": RolloutActor}

    def __init__(self, cfg: PPOConfig, sft: str, reward: str | Callable, data: str, out: str,
                 log: Callable[[str], None] = print):
        from rlhf_ray.checkpoint import local_dir, verify_checkpoint
        from rlhf_ray.stages.common import check_compatible, check_history, open_data, ref
        from rlhf_ray.tokens import load_tokenizer

        # locations: local paths (on a cluster, a file system every node mounts) or storage URIs
        self.cfg, self.log = cfg, log
        self.sft = storage.normalize(sft)
        self.reward_source = reward if callable(reward) or reward == "rule" else storage.normalize(reward)
        self.data = storage.normalize(data)
        self.out = storage.normalize(out)
        self.sft_manifest = verify_checkpoint(self.sft)  # verified once in this process (cached)
        check_history(self.sft_manifest, cfg, self.sft)
        self.reward_members = [storage.normalize(m) for m in cfg.reward.members]
        self.member_refs = []
        if isinstance(self.reward_source, str) and self.reward_source != "rule":
            refs = []
            for path in [self.reward_source, *self.reward_members]:
                manifest = verify_checkpoint(path)
                if manifest.get("stage") != "reward":
                    raise CheckpointError(f"{path}: a {manifest.get('stage')!r} checkpoint, not a reward model "
                                          f"(rlhf-ray reward)")
                check_history(manifest, cfg, path)
                refs.append(ref(manifest))
            self.reward_ref, self.member_refs = refs[0], refs[1:]
        elif self.reward_members:
            raise UserError(f"ppo.reward.members: an ensemble of reward checkpoints needs a reward checkpoint as "
                            f"its first member, not {self.reward_source!r}")
        else:
            name = self.reward_source if isinstance(self.reward_source, str) else getattr(
                self.reward_source, "__name__", "custom")
            self.reward_ref = {"id": name, "stage": name}
        _, self.vocab = load_tokenizer(local_dir(self.sft) / "tokenizer")
        self.prepared = open_data(self.data)
        check_compatible(pd.read_parquet(local_dir(self.sft) / "catalog.parquet"), self.prepared, self.sft)
        train = self.prepared.histories("train")
        if not train.histories:
            raise UserError(f"{self.data}: no user has a training history")
        self.train_histories, self.train_users = train.histories, torch.as_tensor(train.user_idx)
        # PPO-ptx's page term: each training user's held-out page, built once (SFT's own page definition)
        self.ptx_pages = (held_out_pages(self.prepared, train.user_idx, cfg.holdout, cfg.page_size,
                                         self.sft_manifest.get("config", {}))
                          if cfg.policy.ptx_page_coef > 0 else None)
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(cfg.kl_coef))
        self.monitor = HackingMonitor(cfg.hack_threshold)
        self.keeper = Keeper.for_config(cfg)  # which validated policy is exported (actors.selection)
        self.kept_weights: list | None = None  # [ref] of the kept policy's weights, when the keeper holds them
        self._published: list | None = None  # [ref] of the weights the rollout actors hold
        self.advantage = AdvantageStep()  # its zero-CPU actor starts with the first iteration
        self.val_users: dict = {}  # the last validation's per-user values of the monitored metrics
        self.state = RunState(state_dir(self.out), keep=cfg.keep_states)
        self.history: list[dict] = []
        self.validations: list[dict] = []
        self.groups: dict[str, ModelGroup] = {}
        self.layout = None
        self.logger: RunLogger | None = None
        self.recovery = Recovery(self, cfg.max_restarts)
        self.ledger = Ledger()  # every ray.get / ray.put of this process (actors.ledger)
        self.relay = Relay()  # what the last iteration fetched and put
        self._dirty = False  # the policy changed since the rollout actors last loaded it

    # -- actors --------------------------------------------------------------------------
    def role_specs(self) -> list[RoleSpec]:
        return role_specs(self.cfg)

    def make_group(self, s: RoleSpec) -> ModelGroup:
        """Place and start the actors of one role (not set up yet)."""
        return ModelGroup(self.ROLE_CLASSES[s.role], s.role, s.ranks, num_cpus=s.num_cpus, num_gpus=s.num_gpus,
                          resources=s.resources, placement=self.layout.placements[s.role], strategy=self.cfg.strategy,
                          ledger=self.ledger)

    def setup_group(self, role: str) -> list:
        """Set up every rank of ``role`` from the SFT checkpoint (ObjectRefs, not waited for)."""
        c = self.cfg
        if role == "policy":
            return self.policy.run_all("setup", self.sft, c.policy, c.total_steps(c.policy))
        if role == "critic":
            return self.critic.run_all("setup", self.sft, c.critic, c.total_steps(c.critic), c.seed)
        if role == "reference":
            return self.groups["reference"].run_all("setup", self.sft)
        if role == "reward":
            return self.groups["reward"].run_all("setup", self.reward_source,
                                                 c.reward.replace(members=self.reward_members), self.data)
        gen = GenerationConfig(**c.prompt.to_dict(), strategy="sample", temperature=c.rollout.temperature,
                               top_k=c.rollout.top_k, shortlist=c.rollout.shortlist)
        return self.rollout.run_all("setup", self.sft, gen, c.seed)

    def start(self) -> None:
        """Place and start every role, then set them all up concurrently."""
        c = self.cfg
        specs = self.role_specs()
        self.layout = plan(specs, c.colocate, c.strategy)
        for s in specs:
            self.groups[s.role] = self.make_group(s)
        pending = {s.role: self.setup_group(s.role) for s in specs}
        info = {role: self.groups[role].get(refs) for role, refs in pending.items()}
        self.prepared_ref = self.ledger.put(self.prepared)  # once, for validation on rollout actor 0
        reward = info["reward"][0]
        self.log(f"[ppo] roles up: policy x{c.policy.ranks} (ZeRO-{c.policy.train.zero_stage}), critic x{c.critic.ranks} "
                 f"(ZeRO-{c.critic.train.zero_stage}), rollout x{c.rollout.actors}, reference, reward "
                 f"{reward['kind']} {reward['mix']}; "
                 f"{'colocated ' + str(self.layout.bundles) if c.colocate else 'spread (' + c.strategy + ')'}")
        if reward.get("max_history") not in (None, c.max_history):  # a callable reward (checkpoints are checked)
            self.log(f"[ppo] note: the reward builds prompts of {reward['max_history']} history items "
                     f"(its own), the policy of {c.max_history}")

    @property
    def policy(self) -> ModelGroup:
        return self.groups["policy"]

    @property
    def critic(self) -> ModelGroup:
        return self.groups["critic"]

    @property
    def rollout(self) -> ModelGroup:
        return self.groups["rollout"]

    def shutdown(self) -> None:
        self.advantage.close()
        for g in self.groups.values():
            g.kill()
        self.groups = {}
        if self.layout is not None:
            self.layout.remove()
            self.layout = None

    # -- one iteration ---------------------------------------------------------------------
    def batch_users(self, iteration: int) -> np.ndarray:
        """Indices into the train users for ``iteration``: a seeded permutation per pass over them."""
        U, B = len(self.train_histories), self.cfg.rollout_batch_size
        pos = np.arange(iteration * B, (iteration + 1) * B)
        out = np.empty(B, dtype=np.int64)
        for epoch in np.unique(pos // U):
            perm = rng(self.cfg.seed, "users", int(epoch)).permutation(U)
            sel = pos // U == epoch
            out[sel] = perm[pos[sel] % U]
        return out

    def prompt_batch(self, iteration: int) -> PromptBatch:
        """The iteration's users: histories and ids only (each role builds its rows' prompts)."""
        idx = self.batch_users(iteration)
        targets = [self.ptx_pages[i] for i in idx] if self.ptx_pages is not None else None
        return rollout_prompts([self.train_histories[i] for i in idx], self.train_users[idx], self.vocab,
                               self.cfg.max_history, self.cfg.exclude_seen, self.cfg.holdout, targets)

    def sync_weights(self) -> None:
        """Policy -> rollout actors.

        CPU (here): policy rank 0 puts its consolidated weights in the object store once
        (``publish_weights``: every rank takes part, ZeRO-3 gathers) and the same ObjectRef goes
        to every rollout actor. On GPUs this is the one method to replace with a collective
        broadcast from policy rank 0 to the rollout actors; ``load_weights`` keeps its contract.
        """
        published = self.policy.call("publish_weights")[0]
        self.rollout.call("load_weights", published[0])
        self._dirty = False
        # kept for current_weights only when a validated policy may be exported (an extra copy otherwise)
        self._published = published if self.keeper.holds_weights else None

    def current_weights(self) -> list:
        """``[ref]`` of the policy's weights now (published once; nothing travels through the driver)."""
        if self._dirty:
            self.sync_weights()
        if self._published is None:  # the SFT start: the rollout actors loaded it from disk
            self._published = self.policy.call("publish_weights")[0]
        return self._published

    def keep(self, iteration: int, validation: dict, alert: dict | None) -> None:
        """Offer a validation to the keeper; hold its weights when it is kept and they may be exported."""
        if self.keeper.offer(iteration, validation, flagged=alert is not None) and self.keeper.holds_weights:
            self.kept_weights = self.current_weights()

    def make_experience(self, iteration: int, timer) -> tuple[Sharded, Sharded, dict]:
        """Steps 1-4: the prompt batch and the Experience, both left in the object store (Sharded),
        and the Experience's stats (the only values fetched here)."""
        c = self.cfg
        with timer("sync"):
            if self._dirty:
                self.sync_weights()
        prompts = Sharded.put(self.prompt_batch(iteration), self.ledger)  # one copy; every role reads its rows
        with timer("generate"):
            rollout = self.rollout.dispatch("generate", prompts, iteration=iteration)
            _wait(rollout)
        with timer("score"):
            scores = self.groups["reward"].dispatch("score", prompts, rollout)
            ref = self.groups["reference"].dispatch("logprobs", prompts, rollout)
            values = self.critic.dispatch("values", prompts, rollout)
            _wait(scores, ref, values)
        with timer("advantage"):
            exp, stats = self.advantage(rollout, scores, ref, values, self.ledger, kl_coef=self.kl_ctl.value,
                                        kl_estimator=c.kl_estimator, gamma=c.gamma, lam=c.lam,
                                        whiten_advantages=c.whiten_advantages)
        return prompts, exp, stats

    def iteration(self, it: int) -> dict:
        c = self.cfg
        times = {p: 0.0 for p in PHASES}

        @contextmanager
        def timer(phase: str):
            t0 = time.perf_counter()
            yield
            times[phase] += time.perf_counter() - t0

        self.ledger.drain()  # count this iteration only
        t_start = time.perf_counter()
        kl_coef = self.kl_ctl.value
        prompts, exp, stats = self.make_experience(it, timer)
        seed = derive_seed(c.seed, "train", it)
        with timer("train"):  # both groups read their rows of the one copy of each
            p_refs = self.policy.run_sharded("train", prompts, exp, epochs=c.ppo_epochs, seed=seed)
            c_refs = self.critic.run_sharded("train", prompts, exp, epochs=c.ppo_epochs, seed=seed)
            p_stats, c_stats = _mean_stats(self.policy.get(p_refs)), _mean_stats(self.critic.get(c_refs))
        self._dirty = True
        self.kl_ctl.update(stats["kl/per_page"], n_steps=exp.rows)
        wall = time.perf_counter() - t_start
        self.relay = self.ledger.drain()
        assemble_s = stats.pop("time/assemble_s")  # the advantage arithmetic inside the task
        metrics = {"iteration": it + 1, **stats, "kl/coef": kl_coef,
                   **{f"policy/{k}": v for k, v in p_stats.items()},
                   **{f"critic/{k}": v for k, v in c_stats.items()},
                   **{f"time/{k}_s": v for k, v in times.items()}, "time/assemble_s": assemble_s,
                   "time/iteration_s": wall, "perf/pages_per_s": exp.rows / wall, **self.relay.metrics()}
        self.monitor.observe_reward(stats["reward/total"])
        return metrics

    # -- validation, state, export ---------------------------------------------------------------
    def validate(self, iteration: int) -> dict:
        """Greedy pages + full ranking on the valid split with the current policy (rollout actor 0)."""
        if self._dirty:
            self.sync_weights()
        gen = GenerationConfig(**self.cfg.prompt.to_dict(), strategy="greedy", shortlist=self.cfg.rollout.shortlist)
        m = self.rollout.call_rank(0, "evaluate", self.prepared_ref, gen, "valid", self.cfg.eval_users,
                                   "val/", WATCHED)
        self.val_users = m.pop("per_user", {})  # for the hacking monitor's interval; not logged
        m = {"iteration": iteration, **m}
        self.validations.append(m)
        return m

    def controller_state(self, completed: int) -> dict:
        return {"iteration": completed, "data_position": completed * self.cfg.rollout_batch_size,
                "kl": self.kl_ctl.state_dict(), "monitor": self.monitor.state_dict(), "rng": rng_state(),
                "keeper": self.keeper.state_dict(), "history": self.history, "validations": self.validations,
                "config": self.cfg.to_dict()}

    def save_state(self, completed: int) -> str:
        def engines(tmp: str) -> None:
            p = self.policy.run_all("save_state", storage.join(tmp, "policy"))
            c = self.critic.run_all("save_state", storage.join(tmp, "critic"))
            self.policy.get(p)
            self.critic.get(c)
            if self.kept_weights is not None:
                self.policy.call_rank(0, "save_weights", self.kept_weights, storage.join(tmp, "kept"))

        path = self.state.write(completed, engines, self.controller_state(completed))
        self.log(f"[ppo] state saved: {path}")
        return path

    def restore(self, source: str | None = None) -> int:
        """Load the newest complete state (or the state directory ``source``, another run's: the
        config may then differ in the :data:`actors.stage.ADOPTABLE` fields, which take this
        run's values); returns the number of completed iterations (0: none)."""
        from actors.stage import ADOPTABLE
        from actors.state import complete

        d = storage.normalize(source) if source else self.state.latest()
        if source and not complete(d):
            raise UserError(f"{d}: not a complete PPO state (no readable controller.json)")
        if d is None:
            self.log(f"[ppo] --resume: no complete state under {self.state.root}; starting from the SFT policy")
            return 0
        ctl = read_controller(d)
        changed = _differences(ctl.get("config") or {}, self.cfg.to_dict())
        if changed and (not source or not set(changed) <= set(ADOPTABLE)):
            raise UserError(f"{d}: saved with a different PPO config ({', '.join(changed)}); resume with the same "
                            f"config (or a new --out)" + (f"; only {list(ADOPTABLE)} may change" if source else ""))
        p = self.policy.run_all("load_state", storage.join(d, "policy"))
        c = self.critic.run_all("load_state", storage.join(d, "critic"))
        self.policy.get(p)
        self.critic.get(c)
        if "kl_coef" not in changed:  # an adopted KL weight starts its controller afresh
            self.kl_ctl.load_state_dict(ctl["kl"])
        elif changed:
            self.log(f"[ppo] adopted from {d}: {', '.join(changed)} take this run's values")
        self.monitor = HackingMonitor.from_state(ctl["monitor"])
        self.restore_keeper(d, ctl.get("keeper"))
        set_rng_state(ctl["rng"])
        self.history, self.validations = ctl["history"], ctl["validations"]
        self._dirty, self._published = True, None  # rollout actors still hold the SFT weights
        self.log(f"[ppo] resumed from {d} after {ctl['iteration']} iterations")
        return int(ctl["iteration"])

    def restore_keeper(self, d: str, saved: dict | None) -> None:
        """The keeper of state ``d`` and, when it holds weights, the kept policy saved beside it
        (a state written before ``ppo.select`` existed has neither: the keeper starts afresh)."""
        self.keeper, self.kept_weights = Keeper.for_config(self.cfg), None
        if not saved:
            return
        self.keeper = Keeper.from_state({**saved, **{k: getattr(self.keeper, k) for k in
                                                    ("select", "metric", "holds_weights")}})
        if self.keeper.holds_weights and self.keeper.iteration is not None:
            kept = storage.join(d, "kept")
            if not storage.exists(storage.join(kept, "weights.pt")):
                raise UserError(f"{d}: the state keeps the policy of iteration {self.keeper.iteration} "
                                f"(ppo.select / hack_stop) but {storage.join(kept, 'weights.pt')} is missing")
            self.kept_weights = self.policy.call_rank(0, "load_weights_file", kept)

    def _auto_resume(self) -> bool:
        """``resume="auto"`` (the pipeline, sweep trials): continue the newest state when it was saved
        with this config; a state saved with another config is moved aside (``OUT.state.stale-<time>``,
        never deleted) and the run starts over, as the pipeline retrains a stage whose config changed."""
        d = self.state.latest()
        if d is None:
            return False
        saved = (read_controller(d) or {}).get("config") or {}
        changed = _differences(saved, self.cfg.to_dict())
        if not changed:
            return True
        stale = storage.sibling(self.state.root, f".stale-{time.strftime('%Y%m%d-%H%M%S')}")
        storage.move(self.state.root, stale)
        self.log(f"[ppo] the state in {self.state.root} was saved with another config ({', '.join(changed)}); "
                 f"moved to {stale}, starting over")
        self.state = RunState(self.state.root, keep=self.cfg.keep_states)
        return False

    def records(self) -> list[dict]:
        """Iterations and validations in the order they happened (what ``metrics.jsonl`` holds)."""
        tagged = [(m["iteration"], 0, m) for m in self.history] + [(v["iteration"], 1, v) for v in self.validations]
        return [m for *_, m in sorted(tagged, key=lambda t: t[:2])]

    def _log(self, metrics: dict, state: Path | None = None) -> None:
        if self.logger is not None:
            self.logger.log(metrics, step=int(metrics["iteration"]))
        report(metrics, checkpoint_dir=state)

    def export(self, metrics: dict, weights: list | None = None) -> str:
        """The policy (or ``weights``, ``[ref]``: the kept one) as the ``ppo`` checkpoint at OUT."""
        from rlhf_ray.stages.common import lineage

        info = lineage(self.sft_manifest, self.cfg, {"reward": self.reward_ref,
                                                     **{f"reward_member{i + 1}": r for i, r in enumerate(self.member_refs)}})
        return self.policy.call("export", str(self.out), stage=STAGE, config=self.cfg.to_dict(), metrics=metrics,
                                data_fingerprint=self.prepared.fingerprint, lineage=info, weights=weights)[0]

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool | str = False, stop_after: int | None = None) -> dict:
        """Train; returns the final metrics. ``resume``: True continues this run's newest state, a
        path starts from that state directory (:meth:`restore`), "auto" continues the newest state
        only when it was saved with this config (:meth:`_auto_resume`). ``stop_after``: leave after that
        many iterations of this call (a resumable state is written there), as a preempted run would."""
        c = self.cfg
        if resume == "auto":
            resume = self._auto_resume()
        if not resume and self.state.latest() is not None:
            raise UserError(f"{self.state.root} holds a resumable state: pass --resume to continue it, "
                            f"or choose another --out")
        t0 = time.time()
        self.start()
        logs = ExitStack()  # a storage URI: logs are written on this node and published at the end
        self.logger = RunLogger(log_dir(logs.enter_context(storage.staged(self.out, marker=None))),
                                tensorboard=c.tensorboard)
        try:
            done = self.restore(resume if isinstance(resume, str) else None) if resume else 0
            self.logger.rewrite(self.records())
            if c.eval_every and done == 0:
                base = self.validate(0)
                self._log(base)
                self.monitor.observe_validation(0, base, self.val_users)
                self.keep(0, base, None)
                self.log(f"[ppo] baseline (SFT) {self._brief(base)}")
            stopped, flagged_stop = None, False
            ran = 0
            self.recovery.mark_start(done)
            it = done
            while it < c.iterations:
                try:
                    m = self.iteration(it)
                    self.history.append(m)
                    self._log(m)
                    ran += 1
                    self.log(f"[ppo] iter {it + 1}/{c.iterations} reward {m['reward/total']:.4f} "
                             f"kl {m['kl/per_page']:.4f} pg {m['policy/policy_loss']:.4f} "
                             f"vf {m['critic/value_loss']:.4f} {m['perf/pages_per_s']:.1f} pages/s")
                    last = it + 1 == c.iterations
                    v = None
                    if c.eval_every and ((it + 1) % c.eval_every == 0 or last):
                        v = self.validate(it + 1)
                        self.log(f"[ppo] validation after {it + 1}: {self._brief(v)}")
                        alert = self.monitor.observe_validation(it + 1, v, self.val_users)
                        if alert:
                            self.log(f"[ppo] WARNING reward hacking? reward +{alert['reward_gain']:.4f} since the "
                                     f"start while {alert['metric']} fell {100 * alert['drop']:.1f}% "
                                     f"({alert['baseline']:.4f} -> {alert['now']:.4f})")
                            if c.hack_stop:
                                stopped = f"reward-hacking monitor at iteration {it + 1}"
                                flagged_stop = True
                        self.keep(it + 1, v, alert)
                    preempt = stop_after is not None and ran >= stop_after and not last
                    saved = None
                    if (c.save_every and (it + 1) % c.save_every == 0) or last or stopped or preempt:
                        saved = self.save_state(it + 1)
                    if v is not None:  # with the state saved at this iteration, if any (Tune: PBT's exploit)
                        self._log(v, state=saved)
                except Exception as err:  # an actor or node lost: restart, roll back (actors.recovery)
                    it, stopped, flagged_stop = self.recovery.recover(err, it), None, False
                    continue
                it += 1
                if stopped or preempt:
                    break
            if stopped:
                self.log(f"[ppo] stopped by the {stopped}")
            kept = self.keeper.exports_kept(it, flagged_stop)
            final = self.final_metrics(stopped, self.keeper.iteration if kept else None)
            final["wall_s"] = time.time() - t0
            if (stop_after is None or it >= c.iterations) or stopped:
                if kept:
                    self.log(f"[ppo] exporting the policy validated after {self.keeper.iteration} iterations"
                             + (" (the SFT start)" if self.keeper.iteration == 0 else "")
                             + (f": the best {self.keeper.metric} {self.keeper.value:.4f} the monitor did not flag"
                                if c.select == "best" else ": the last validation the monitor did not flag"))
                final["checkpoint"] = self.export(final, self.kept_weights if kept else None)
                self.log(f"[ppo] policy exported to {final['checkpoint']}")
                report(final, checkpoint_dir=final["checkpoint"])
            return final
        finally:
            self.logger.close()
            logs.close()
            self.shutdown()

    def final_metrics(self, stopped: str | None, kept: int | None = None) -> dict:
        """The last iteration's training figures; the validation of the exported policy (the last
        one, or the kept one's when ``kept`` names its iteration) and which one it is."""
        out: dict = {"iterations": len(self.history)}
        if self.history:
            out.update({k: v for k, v in self.history[-1].items() if k != "iteration"})
        chosen = [v for v in self.validations if v["iteration"] == kept] if kept is not None else self.validations
        if chosen:
            out.update({k: v for k, v in chosen[-1].items() if k != "iteration"})
            out["select/iteration"] = int(chosen[-1]["iteration"])
        out["hacking_alerts"] = len(self.monitor.alerts)
        out["restarts"] = len(self.recovery.restarts)
        if stopped:
            out["stopped"] = stopped
        return out

    @staticmethod
    def _brief(m: dict) -> str:
        keys = ("val/ndcg@10", "val/recall@20", "val/tail_recall@20", "val/page_ild", "val/page_cat_entropy")
        return " ".join(f"{k.split('/')[1]} {m[k]:.4f}" for k in keys if k in m)
