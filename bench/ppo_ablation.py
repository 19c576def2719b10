"""PPO variants on ml-100k leave-one-out: what guards the ranking, what buys diversity.

    python bench/ppo_ablation.py --seeds 0,1,2 [--variants default,ptx_1,...]
    python bench/ppo_ablation.py --smoke --seeds 0      # synthetic data, minutes: the plumbing

Every variant is a PPO run from the seed's own SFT and reward model (the protocol table's,
``runs/bench/loo/seed{s}/{sft,reward}``) with :data:`BASE` (the shipped ``ppo`` section as it was
before these ablations) changed in one or two fields (:data:`VARIANTS`), so the rows stay one
change apart whatever is shipped; ``default`` is the config's own section as shipped (it
reuses the seed's PPO checkpoint when its manifest records the same config, as does every
variant its own):

* ``ptx_*``: PPO-ptx, InstructGPT's mix of the pre-training loss into PPO
  (``ppo.policy.ptx_coef``): SFT's next-item cross-entropy on the rollout prompts' histories,
  added to the policy loss. PPO raises the page but can lower the full ranking (Recall@20,
  NDCG@10) that the first slot's logits give; this term pulls those logits back to SFT's;
* ``div*``: a larger weight on the page's category entropy in the reward
  (``ppo.reward.diversity_weight``), for the ILD@10 target;
* ``long``, ``hit3``, ``entropy``, ``adaptive_kl``, ``rollouts128``: the 64-page section shipped
  until 0a89db6 (``div3_ptx_1``) with 3x the iterations, a larger hit weight, an entropy bonus, an
  adaptive KL coefficient, or 128 pages per iteration (shipped since);
* ``hit3_ptx3``, ``hit3_lr_half``, ``hit3_lr_3q``, ``hit3_lr_half_div4``: the section shipped until
  this table (``hit3``) with PPO-ptx 3, half or 3/4 of the policy learning rate, or half of it with
  category-entropy weight 4, against the full-ranking NDCG@10 fall the hacking monitor flagged on 2 of 5 seeds;
* ``hit3_lr_half_div5``, ``hit3_lr_half_div6``: ``hit3_lr_half_div4`` with category-entropy weight 5 or 6
  instead of 4, for the page ILD@10 target it missed on validation (``hit3_lr_half_div5`` is shipped
  since it was re-chosen on the SFT with ``rank_weight`` 0.25);
* ``hit3_lr_half_div4_sl10``, ``..._sl20``: the shipped section with rollouts sampled among each
  prompt's first-slot top 10 / 20 (``ppo.rollout.shortlist``; the reference's KL and the policy's
  ratio restricted alike): PPO trained for the pages a shortlist decodes (README "Pages decoded
  from a shortlist"); this table's validation columns are whole-catalogue pages, so judge these
  with ``bench/shortlist_quality.py --policies sft,ppo_ablation/NAME --shortlists M``;
* ``hit3_lr_half_div4_best``, ``hit3_best``: the same training as the variant named, exporting the
  policy of its best validation (``ppo.select: best``, page NDCG@10 on the monitor's 300 users,
  the SFT start included) instead of the final one.

Columns are the PPO targets (page NDCG@10, Recall@20, page ILD@10, README "Alignment targets")
plus NDCG@10, each compared with SFT paired over users. The validation columns are the same
figures on the whole validation split (every variant's final policy and SFT on the same users,
20-item pages), what a choice between variants is made on. Test is read once per checkpoint.
Writes ``bench/results/ppo_ablation.json``. The harness is ``bench/lpo_ablation.py``'s.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from lpo_ablation import run_ablation, same_config  # noqa: E402
from protocol_table import set_aside  # noqa: E402

from rlhf_ray.config.base import deep_merge  # noqa: E402

#: the PPO sweep's policy learning rate (tune_configs/ppo-grounded.yaml), every variant's until hit3_lr_*
SWEEP_LR = 0.0001963246395844747

#: the ppo section every variant but ``default`` changes: the shipped one with the fields these
#: ablations searched set back to what was shipped before them (category entropy 1, no ptx and no page term,
#: 64 pages per iteration, the PPO sweep's policy lr 1.96e-4), so every row keeps its meaning (and its checkpoint)
#: when the shipped section moves
BASE = {"reward": {"diversity_weight": 1.0},
        "policy": {"ptx_coef": 0.0, "ptx_page_coef": 0.0, "ptx_page_slots": 0, "train": {"lr": SWEEP_LR}},
        "rollout_batch_size": 64}
#: the section shipped from 902de4b to 0a89db6 (= div3_ptx_1): category entropy 3, ptx 1, 64 pages per
#: iteration; the later variants change it
SHIPPED = {"reward": {"diversity_weight": 3.0}, "policy": {"ptx_coef": 1.0}}
#: hit3: the 64-page section with hit weight 3 (shipped from e0c3e8c to 97cd55b); the hit3_* variants change it
HIT3 = deep_merge(SHIPPED, {"reward": {"hit_weight": 3.0}})
#: hit3_lr_half_div4 (shipped since 97cd55b); the *_sl* variants change it
HIT3_LR_HALF_DIV4 = deep_merge(HIT3, {"reward": {"diversity_weight": 4.0}, "policy": {"train": {"lr": SWEEP_LR / 2}}})
#: hit3_lr_half_div5 (shipped since 370d372); the *_pp* variants change it
HIT3_LR_HALF_DIV5 = deep_merge(HIT3_LR_HALF_DIV4, {"reward": {"diversity_weight": 5.0}})
#: hit3_lr_half_div15_pp1.0_s1 (shipped from 9146454 to the commit that shipped weight 30); the shipped_* reward
#: variants change it (they were measured while it was shipped, and keep their meaning)
SHIPPED_DIV15 = deep_merge(HIT3_LR_HALF_DIV5, {"reward": {"diversity_weight": 15.0},
                                               "policy": {"ptx_page_coef": 1.0, "ptx_page_slots": 1}})
#: hit3_lr_half_div30_pp1.0_s1, the config's ppo section (shipped since it met every PPO target pooled over five
#: leave-one-out seeds where weight 15 missed Recall@20, README "A larger category-entropy weight")
SHIPPED_NOW = deep_merge(SHIPPED_DIV15, {"reward": {"diversity_weight": 30.0}})
#: reward-model ensemble members of a seed's run: the run's own pairs, other training seeds (:func:`ensure_members`)
MEMBERS = ["{run}/reward_m1", "{run}/reward_m2"]
#: name -> (what it tests, changes to BASE); "default" is the config's own ppo section as shipped
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("PPO as shipped before these ablations: category-entropy weight 1, no ptx, 64 pages", {}),
    "default": ("shipped (the config's ppo section as it is)", {}),
    "ptx_0.1": ("PPO-ptx: + 0.1 x SFT's next-item loss on the prompts' histories", {"policy": {"ptx_coef": 0.1}}),
    "ptx_1": ("PPO-ptx: + 1.0 x SFT's next-item loss on the prompts' histories", {"policy": {"ptx_coef": 1.0}}),
    "div2": ("reward: category-entropy weight 2 instead of 1", {"reward": {"diversity_weight": 2.0}}),
    "div2_ptx_1": ("category-entropy weight 2 and PPO-ptx 1.0",
                   {"reward": {"diversity_weight": 2.0}, "policy": {"ptx_coef": 1.0}}),
    "div3_ptx_1": ("category-entropy weight 3 and PPO-ptx 1.0 (the 64-page section shipped from 902de4b to "
                   "0a89db6)",
                   {"reward": {"diversity_weight": 3.0}, "policy": {"ptx_coef": 1.0}}),
    "div4_ptx_1": ("category-entropy weight 4 and PPO-ptx 1.0",
                   {"reward": {"diversity_weight": 4.0}, "policy": {"ptx_coef": 1.0}}),
    # after the 24-epoch SFT schedule: PPO moves the policy little in 20 iterations (approx. KL ~0 by the
    # end, reward flat), and the reward model's own score barely tracks page NDCG (README, reward calibration)
    "long": ("the 64-page section (div3_ptx_1), 60 iterations instead of 20 (3x the rollouts)",
             {**SHIPPED, "iterations": 60}),
    "hit3": ("the 64-page section, hit weight 3 instead of 1.46 (the held-out hits outweigh the reward model's "
                       "score)",
             HIT3),
    "long_hit3": ("the 64-page section, 60 iterations and hit weight 3",
                  {**HIT3, "iterations": 60}),
    # the levers the alignment issue names that no sweep searched
    "entropy": ("the 64-page section + entropy bonus 0.01 (policy loss -= 0.01 x H(pi) per slot)",
                {**SHIPPED, "policy": {**SHIPPED["policy"], "entropy_coef": 0.01}}),
    "rollouts128": ("the 64-page section with 128 pages per iteration (2x the rollouts, same iterations; "
                    "shipped since 0a89db6)",
                    {**SHIPPED, "rollout_batch_size": 128}),
    "adaptive_kl": ("the 64-page section, adaptive KL coefficient (target 0.5 per page, horizon 640 pages; its "
                    "runs end near 0.2, so the coefficient falls and the policy may move further)",
                    {**SHIPPED, "adaptive_kl": True, "kl_target": 0.5, "kl_horizon": 640}),
    # hit3, shipped until 97cd55b, let validation NDCG@10 fall 7% on 2 of 5 leave-one-out seeds (the hacking
    # monitor flagged both): a stronger pull of the first slot's logits back to SFT's, or a smaller step
    "hit3_ptx3": ("hit3 (shipped from e0c3e8c to 97cd55b) with PPO-ptx 3.0 instead of 1.0",
                  deep_merge(HIT3, {"policy": {"ptx_coef": 3.0}})),
    "hit3_lr_half": ("hit3 with half the policy learning rate (9.8e-5)",
                     deep_merge(HIT3, {"policy": {"train": {"lr": SWEEP_LR / 2}}})),
    "hit3_lr_3q": ("hit3 with three quarters of the policy learning rate (1.47e-4)",
                   deep_merge(HIT3, {"policy": {"train": {"lr": SWEEP_LR * 0.75}}})),
    "hit3_lr_half_div4": ("hit3_lr_half with category-entropy weight 4 instead of 3", HIT3_LR_HALF_DIV4),
    # hit3_lr_half_div4 missed page ILD@10 on five seeds' validation (1.044x) and on the main job's seed 0:
    # a larger weight on the page's category entropy, the one lever aimed at it (div5 shipped since)
    **{f"hit3_lr_half_div{w}": (f"hit3_lr_half_div4 (shipped from 97cd55b) with category-entropy weight {w} "
                                "instead of 4", deep_merge(HIT3_LR_HALF_DIV4, {"reward": {"diversity_weight": float(w)}}))
       for w in (5, 6)},
    # PPO-ptx's next-item term never trains the <page> position the full ranking is read at; on the SFT with
    # page-loss weight 0.25 every variant's Recall@20 ended at or below SFT's (README "PPO variants"):
    # SFT's page loss mixed in too, on the held-out training positives (ppo.policy.ptx_page_coef)
    **{f"hit3_lr_half_div5_pp{c}": (f"hit3_lr_half_div5 (shipped since 370d372) + {c} x SFT's page loss on the "
                                    "page of each prompt's held-out training positives (ppo.policy.ptx_page_coef)",
                                    deep_merge(HIT3_LR_HALF_DIV5, {"policy": {"ptx_page_coef": c}}))
       for c in (0.25, 1.0)},
    # the page term pulls the page back toward SFT's (ILD@10 1.004x at 1.0): a larger category-entropy weight
    **{f"hit3_lr_half_div{w}_pp{c}": (f"hit3_lr_half_div5_pp{c} with category-entropy weight {w} instead of 5",
                                      deep_merge(HIT3_LR_HALF_DIV5, {"reward": {"diversity_weight": float(w)},
                                                                     "policy": {"ptx_page_coef": c}}))
       for w, c in ((7, 0.5), (8, 1.0), (10, 1.0))},
    # ... or the page term on the first slot only: the <page> position, where the full ranking is read
    **{f"hit3_lr_half_div5_pp{c}_s1": (f"hit3_lr_half_div5_pp{c} on the page's first slot only "
                                       "(ppo.policy.ptx_page_slots: 1)",
                                       deep_merge(HIT3_LR_HALF_DIV5, {"policy": {"ptx_page_coef": c,
                                                                                 "ptx_page_slots": 1}}))
       for c in (1.0, 2.0)},
    # the first-slot page term with a larger category-entropy weight (15 shipped since 9146454); 20, 25 and 30 for
    # the PageLLM protocol, where 15 misses page ILD@10 (1.022x on test)
    **{f"hit3_lr_half_div{w}_pp1.0_s1": (f"hit3_lr_half_div5_pp1.0_s1 with category-entropy weight {w} instead of 5",
                                         deep_merge(HIT3_LR_HALF_DIV5, {"reward": {"diversity_weight": float(w)},
                                                                        "policy": {"ptx_page_coef": 1.0,
                                                                                   "ptx_page_slots": 1}}))
       for w in (8, 10, 12, 15, 20, 25, 30)},
    **{f"hit3_lr_half_div4_sl{m}": (f"hit3_lr_half_div4 with rollouts sampled among each prompt's first-slot "
                                    f"top {m} (ppo.rollout.shortlist)",
                                    deep_merge(HIT3_LR_HALF_DIV4, {"rollout": {"shortlist": m}})) for m in (10, 20)},
    # which validated policy is exported (ppo.select): the same training as the variant named, the export the
    # validation (of the monitor's 300 users, every 5 iterations, the SFT start included) with the highest
    # page NDCG@10 the monitor did not flag
    "hit3_lr_half_div4_best": ("hit3_lr_half_div4 exporting its best validated policy (select: best, page "
                               "NDCG@10 on the monitor's users)", deep_merge(HIT3_LR_HALF_DIV4, {"select": "best"})),
    "hit3_best": ("hit3 exporting its best validated policy (select: best, page NDCG@10 on the monitor's users)",
                  deep_merge(HIT3, {"select": "best"})),
    # what the learned reward model adds to PPO at the shipped weights (bench/reward_judges.py: without the hit term
    # PPO's reward is mostly the category-entropy term): its score left out, and made three times louder
    **{f"shipped_model{w:g}": (f"the shipped section with the reward model's score weighted {w:g} in PPO's reward "
                               f"(ppo.reward.model_weight; 0 = hits and category entropy alone)",
                               deep_merge(SHIPPED_NOW, {"reward": {"model_weight": w}})) for w in (0.0, 3.0, 10.0)},
    # the monitor flags loo seed 2 (and 3 of five) for a fall of NDCG@10 on its 300 users within the first 5
    # iterations, when the critic has barely trained: the policy's learning rate ramped up over the first quarter
    **{f"shipped_warmup{r:g}": (f"the shipped section with the policy's learning rate warmed up over the first "
                                f"{r:g} of its steps (policy.train.warmup_ratio; 0 shipped)",
                                deep_merge(SHIPPED_NOW, {"policy": {"train": {"warmup_ratio": r}}})) for r in (0.25,)},
    # the category-entropy term paid slot by slot (each slot the entropy it adds) instead of at the page's end: the
    # same reward, credited where it is earned (PageLLM's page ILD@10 misses 1.05x at weight 30, 1.043x)
    "shipped_divslot": ("the shipped section with the category-entropy term credited per slot "
                        "(ppo.reward.diversity_credit: slot)",
                        deep_merge(SHIPPED_NOW, {"reward": {"diversity_credit": "slot"}})),
    # the reward-side levers issue 13 names: clipping, an ensemble of reward models, and its uncertainty penalty, on
    # the section shipped when they were measured (category-entropy weight 15)
    **{f"shipped_clip{c:g}": (f"the weight-15 section with the reward model's normalised scores clipped to "
                              f"[-{c:g}, {c:g}] (ppo.reward.clip)", deep_merge(SHIPPED_DIV15, {"reward": {"clip": c}}))
       for c in (1.0, 2.0)},
    "shipped_ens3": ("the weight-15 section with the reward model averaged with 2 more trained on the same pairs "
                     "(other seeds; ppo.reward.members)", deep_merge(SHIPPED_DIV15, {"reward": {"members": MEMBERS}})),
    **{f"shipped_ens3_unc{u:g}": (f"shipped_ens3 less {u:g} x the 3 models' standard deviation, per page and per slot "
                                  "(ppo.reward.uncertainty_coef)",
                                  deep_merge(SHIPPED_DIV15, {"reward": {"members": MEMBERS, "uncertainty_coef": u}}))
       for u in (1.0, 3.0)},
}
COLUMNS = ["page_ndcg@10", "recall@20", "page_ild@10", "ndcg@10"]
COMPARE = ["page_ndcg@10", "recall@20", "page_ild@10", "ndcg@10"]
VALID = COLUMNS  # on the whole validation split (942 users), SFT and every variant alike


def ppo_config(run_dir: Path, name: str, smoke: bool):
    """The variant's PPOConfig: the seed's pipeline config with :data:`VARIANTS`' changes."""
    from rlhf_ray.pipeline import load_pipeline_raw

    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    if name != "default":
        raw["ppo"] = deep_merge(deep_merge(raw.get("ppo") or {}, BASE), VARIANTS[name][1])
        reward = raw["ppo"].get("reward") or {}
        if reward.get("members"):
            reward["members"] = [m.format(run=run_dir) for m in reward["members"]]
    if smoke:
        raw["ppo"] = deep_merge(raw["ppo"], {"iterations": 2, "rollout_batch_size": 8, "eval_every": 1,
                                             "eval_users": 20, "save_every": 0,
                                             "policy": {"train": {"batch_size": 8}},
                                             "critic": {"train": {"batch_size": 8}}})
    return load_pipeline_raw(raw)["ppo"]


def ensure_reward(run_dir: Path, smoke: bool) -> Path:
    """The seed's reward model (the protocol table's; trained with the pipeline when missing)."""
    import subprocess

    if not (run_dir / "reward" / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "rlhf_ray.cli", "pipeline", "--config", str(run_dir / "config.yaml"),
               "--out", str(run_dir), "--stages", "reward"] + (["--smoke"] if smoke else [])
        print(f"[ppo-ablation] $ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    return run_dir / "reward"


def ensure_members(run_dir: Path, members: list[str], smoke: bool) -> None:
    """Train each missing ensemble member (``{run}/reward_mN``) as the seed's reward model was trained,
    on its pair set (``reward.pairs.parquet``), with training seed ``100 N + seed``."""
    import subprocess

    ensure_reward(run_dir, smoke)
    seed = json.loads((run_dir / "reward" / "manifest.json").read_text())["config"]["train"]["seed"]
    for m in map(Path, members):
        if (m / "manifest.json").is_file():
            continue
        n = int(m.name.rsplit("_m", 1)[1])
        cmd = [sys.executable, "-m", "rlhf_ray.cli", "reward", "--config", str(run_dir / "config.yaml"),
               "--config-key", "reward", "--sft", str(run_dir / "sft"), "--data", str(run_dir / "data"),
               "--out", str(m), "--pairs-file", str(run_dir / "reward.pairs.parquet"),
               "--train.seed", str(100 * n + seed), "--no-train.progress"] + (["--train.max-steps", "4"] if smoke else [])
        print(f"[ppo-ablation] $ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)


def train_variant(run_dir: Path, name: str, seed: int, smoke: bool) -> Path:
    """Train (or reuse) one variant's PPO policy; returns its checkpoint directory."""
    from rlhf_ray.stages.launch import launch

    cfg = ppo_config(run_dir, name, smoke)
    out = run_dir / "ppo_ablation" / name
    for done in (out, run_dir / "ppo"):  # its own run, or the seed's PPO (protocol table) with the same config
        if same_config(done, cfg):
            return done
    # trained with another config (e.g. "default" before the shipped section changed): kept aside
    set_aside(out.parent, [name], time.strftime("%Y%m%d-%H%M%S"))
    ensure_members(run_dir, cfg.reward.members, smoke)
    t = time.time()
    launch("ppo", cfg, str(run_dir / "data"), str(out), init=str(run_dir / "sft"),
           inputs={"reward": str(ensure_reward(run_dir, smoke))})
    print(f"[ppo-ablation] seed {seed} {name}: trained in {time.time() - t:.0f} s", flush=True)
    return out


def monitor_note(name: str, checkpoints: list[Path]) -> str:
    """The reward-hacking monitor's alerts of a variant's runs, one count per seed (its manifests), and
    for a run that exported a kept policy (``ppo.select``) the iteration it was validated after."""
    metrics = [json.loads((ck / "manifest.json").read_text()).get("metrics", {}) for ck in checkpoints]
    note = f"hacking-monitor alerts per seed {', '.join(str(m.get('hacking_alerts', '?')) for m in metrics)}"
    kept = [m.get("select/iteration") for m in metrics]
    if any(k is not None and k != m.get("iterations") for k, m in zip(kept, metrics)):
        note += f"; exported the policy validated after iteration {', '.join(map(str, kept))} (per seed)"
    return note


def main(argv=None) -> int:
    return run_ablation(argv, __doc__, "ppo_ablation", {k: v[0] for k, v in VARIANTS.items()}, train_variant,
                        "SFT (the start of every variant)", columns=COLUMNS, compare=COMPARE, valid=VALID,
                        whole_valid=True, checkpoint_note=monitor_note)


if __name__ == "__main__":
    sys.exit(main())
