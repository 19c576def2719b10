"""LPO stage: negatives, reweighting, learning, tail lift, CLI (rlhf_ray.stages.lpo)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlhf_ray.checkpoint import load_checkpoint, verify_checkpoint
from rlhf_ray.config import LPOConfig
from rlhf_ray.generation import score_items
from rlhf_ray.losses import lpo_softmax
from rlhf_ray.stages import lpo
from rlhf_ray.stages.common import open_data

TRAIN = {"epochs": 1, "batch_size": 16, "progress": False, "tensorboard": False, "eval_users": 20}


def lpo_config(train: dict | None = None, **kw) -> LPOConfig:
    return LPOConfig.from_dict({"max_history": 20, "n_negatives": 6, "train": {**TRAIN, **(train or {})}, **kw})


def stage(tiny_sft, synth_data, tmp_path, **kw):
    """The LPO StageSpec on the tiny SFT checkpoint, plus the prepared data."""
    cfg = lpo_config(**kw)
    prepared = open_data(synth_data)
    ck = load_checkpoint(tiny_sft)
    spec = lpo.build_spec(cfg, prepared, ck.model, ck.tokenizer, ck.vocab, ck.catalog, tmp_path / "out", ck.manifest)
    return spec, prepared


@pytest.mark.parametrize("sampler,pool", [("gumbel", "all"), ("gumbel", "head"), ("uniform", "all"),
                                          ("popularity", "head"), ("in_batch", "all")])
def test_negatives_never_positive_or_seen(tiny_sft, synth_data, tmp_path, sampler, pool):
    # tau small: the sampler goes for the highest-scoring items, i.e. exactly the positive if allowed
    spec, prepared = stage(tiny_sft, synth_data, tmp_path, sampler=sampler, pool=pool, tau=0.05, examples_per_user=6)
    users_items = [set(s.items.tolist()) for s in lpo.training_sequences(prepared)]
    mod, checked = spec.module, 0
    for batch in spec.batches(0, 0, 1):
        with torch.no_grad():
            scores = lpo.restricted_logprobs(mod.lm, mod.vocab, batch)
        neg = mod.sample_negatives(scores, batch)  # (B, N)
        assert neg.shape == (len(batch["pos"]), 6)
        seen = batch["prompts"].blocked  # (B, n_items): the whole history, from build_prompts
        assert not seen.gather(1, neg).any(), "a history item was drawn as a negative"
        assert not (neg == batch["pos"][:, None]).any(), "the positive was drawn as its own negative"
        for row, p in zip(neg.tolist(), batch["pos"].tolist()):
            assert len(set(row)) == len(row)
            assert any(p in items for items in users_items)
        if pool == "head":
            assert not torch.tensor(prepared.is_tail)[neg].any()
        checked += len(neg)
    assert checked >= 64


def test_gumbel_without_exclusion_would_pick_the_positive(tiny_sft, synth_data, tmp_path):
    """The check above is not vacuous: with the exclusions dropped, low tau draws the positive."""
    spec, _ = stage(tiny_sft, synth_data, tmp_path, tau=0.05, pool="all")
    batch = next(iter(spec.batches(0, 0, 1)))
    with torch.no_grad():
        scores = lpo.restricted_logprobs(spec.module.lm, spec.module.vocab, batch)
    scores[torch.arange(len(scores)), batch["pos"]] = 0.0  # log p = 0: the best possible score
    batch = {**batch, "exclude": torch.zeros_like(batch["exclude"])}
    neg = spec.module.sample_negatives(scores, batch)
    assert (neg == batch["pos"][:, None]).any(dim=1).float().mean() > 0.9


def test_reweighting_favours_tail_targets(tiny_sft, synth_data, tmp_path):
    spec, prepared = stage(tiny_sft, synth_data, tmp_path, reweight_strength=2.0, examples_per_user=6)
    flat, _ = stage(tiny_sft, synth_data, tmp_path, reweight_strength=0.0, examples_per_user=6)
    mixed = 0
    for batch in spec.batches(0, 0, 1):
        tail = torch.tensor(prepared.is_tail)[batch["pos"]]  # from the data, not the batch's flag
        assert torch.equal(batch["tail"], tail)
        zero = torch.zeros(len(batch["pos"]))
        w = spec.module.weights(batch, zero)
        assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
        assert torch.equal(flat.module.weights(batch, zero), torch.ones_like(w))
        if tail.any() and (~tail).any():
            mixed += 1
            assert w[tail].min() > w[~tail].max()
            assert w[tail].min() / w[~tail].max() == pytest.approx(np.exp(2.0), rel=1e-4)
            _, stats = spec.module(batch)
            assert stats["tail_weight_mean"] > 1.0 and stats["weight_entropy"] < 1.0
    assert mixed >= 2, "no batch held both tail and head targets"


def test_adaptive_reweighting_also_favours_hard_examples(tiny_sft, synth_data, tmp_path):
    spec, _ = stage(tiny_sft, synth_data, tmp_path, reweight_strength=1.0, reweight="adaptive")
    static, _ = stage(tiny_sft, synth_data, tmp_path, reweight_strength=1.0)
    batch = next(iter(spec.batches(0, 0, 1)))
    batch = {**batch, "tail": torch.zeros_like(batch["tail"])}  # no tail target: only the loss matters
    losses = torch.arange(len(batch["pos"]), dtype=torch.float32)
    w = spec.module.weights(batch, losses)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.all(w[1:] > w[:-1])  # a higher loss, a higher weight
    z = (losses - losses.mean()) / losses.std(unbiased=False)
    assert torch.allclose(w, len(w) * torch.softmax(z, 0), atol=1e-6)
    assert torch.equal(static.module.weights(batch, losses), torch.ones_like(w))  # static ignores the loss
    loss, stats = spec.module(batch)
    assert torch.isfinite(loss) and stats["weight_entropy"] < 1.0


def test_reweight_on_preference_leaves_cross_entropy_uniform(tiny_sft, synth_data, tmp_path):
    """reweight_on: preference: the tail weights multiply only the listwise term, so with that term
    off the loss is the plain mean CE; reweight_on: both weighs the CE rows too."""
    kw = dict(reweight_strength=2.0, lpo_weight=0.0, examples_per_user=6)
    pref, prepared = stage(tiny_sft, synth_data, tmp_path, reweight_on="preference", **kw)
    both, _ = stage(tiny_sft, synth_data, tmp_path, reweight_on="both", **kw)
    checked = 0
    for batch in pref.batches(0, 0, 1):
        if not (batch["tail"].any() and (~batch["tail"]).any()):
            continue
        with torch.no_grad():
            lp, sp = pref.module(batch)
            lb, sb = both.module(batch)
        assert lp.item() == pytest.approx(sp["ce"], rel=1e-5)  # uniform CE
        assert sp["tail_weight_mean"] > 1.0  # the weights exist, they just do not touch CE
        assert abs(lb.item() - sb["ce"]) > 1e-4  # CE rows weighted towards the tail
        checked += 1
    assert checked >= 2
    assert LPOConfig.from_dict({}).reweight_on == "both"


@pytest.mark.parametrize("loss", ["lpo", "sdpo"])
def test_steps_change_parameters_and_lower_lpo_loss(tiny_sft, synth_data, tmp_path, loss):
    spec, _ = stage(tiny_sft, synth_data, tmp_path, loss=loss, pool="all")
    mod = spec.module
    if loss == "sdpo":  # the frozen reference lives outside the trained module
        ref = mod.reference(torch.device("cpu"))
        assert ref is not None and not any(p.requires_grad for p in ref.parameters())
        assert all(p is not q for p in mod.parameters() for q in ref.parameters())
        assert not any(k.startswith("_ref") for k in mod.state_dict())
        ref_before = [p.clone() for p in ref.parameters()]
    batch = next(iter(spec.batches(0, 0, 1)))
    with torch.no_grad():
        neg = mod.sample_negatives(lpo.restricted_logprobs(mod.lm, mod.vocab, batch), batch)  # fixed negatives

    def fixed_lpo_loss() -> float:
        with torch.no_grad():
            logp = lpo.restricted_logprobs(mod.lm, mod.vocab, batch)
        return lpo_softmax(logp.gather(1, batch["pos"][:, None]).squeeze(1), logp.gather(1, neg))[0].item()

    before_params = [p.detach().clone() for p in mod.parameters()]
    before = fixed_lpo_loss()
    opt = torch.optim.AdamW(mod.parameters(), lr=5e-3)
    torch.manual_seed(0)
    for _ in range(8):
        loss_value, stats = mod(batch)
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        assert np.isfinite(loss_value.item()) and 0.0 <= stats["accuracy"] <= 1.0
    changed = sum(not torch.equal(a, b) for a, b in zip(before_params, mod.parameters()))
    assert changed >= len(before_params) // 2
    assert fixed_lpo_loss() < before - 0.05
    if loss == "sdpo":
        assert all(torch.equal(a, b) for a, b in zip(ref_before, ref.parameters()))


@pytest.fixture(scope="module")
def tail_setup(tmp_path_factory):
    """Synthetic data with the temporal 80/10/10 split (several held-out positives per user,
    so enough tail targets to measure) and a tiny SFT checkpoint trained on it."""
    from rlhf_ray.config import DataConfig
    from rlhf_ray.data.prepare import prepare
    from rlhf_ray.stages import sft
    from tests.conftest import tiny_sft_config

    root = tmp_path_factory.mktemp("lpo-tail")
    prepare(DataConfig(dataset="synthetic", synthetic_users=200, synthetic_items=120, seed=3, split="temporal"),
            root / "data", log=lambda s: None)
    sft.run(tiny_sft_config(), str(root / "data"), str(root / "sft"))
    return root / "data", root / "sft"


def held_out_tail_examples(prepared) -> list[tuple[int, lpo.Example]]:
    """(user, example) per held-out tail positive (valid and test ranges, never trained on):
    the history before its range, the target; seen items blocked."""
    out = []
    for split in ("valid", "test"):
        h = prepared.histories(split)
        for u, hist, targets in zip(h.user_idx, h.histories, h.targets):
            out += [(int(u), lpo.Example(np.asarray(hist), int(t), np.asarray(hist), int(u))) for t in targets
                    if prepared.is_tail[t] and t not in hist]
    return out


def hit_rate(ckpt_dir, prepared, examples, k: int = 20) -> float:
    """HR@k of each example's target in the full restricted ranking at the page's first slot."""
    ck = load_checkpoint(ckpt_dir)
    ck.model.eval()
    batch = lpo.example_batch(examples, ck.vocab, 20, prepared.is_tail)
    with torch.no_grad():
        top = score_items(ck.model, ck.vocab, batch["prompts"]).topk(k, dim=1).indices
    return (top == batch["pos"][:, None]).any(dim=1).float().mean().item()


def test_tail_hit_rate_rises_under_lpo_on_held_out_targets(tail_setup, tmp_path):
    data, sft_ckpt = tail_setup
    prepared = open_data(data)
    pairs = held_out_tail_examples(prepared)
    examples = [e for _, e in pairs]
    assert len(examples) >= 30
    # held out: no target is among its user's training items, which is all LPO (and SFT) train on
    s = prepared.sequences
    trained_on = {(int(u), int(i)) for u, seq, vs in zip(s["user_idx"], s["items"], s["valid_start"]) for i in seq[:vs]}
    assert not {(u, e.positive) for u, e in pairs} & trained_on
    train = {"epochs": 3, "eval_every": 3, "patience": 0, "lr": 3e-3, "seed": 0}
    results = {}
    for strength in (0.0, 3.0):
        out = tmp_path / f"lpo-{strength}"
        lpo.run(lpo_config(train, reweight_strength=strength, pool="head"), str(data), str(out), str(sft_ckpt))
        results[strength] = hit_rate(out, prepared, examples)
    before = hit_rate(sft_ckpt, prepared, examples)
    assert results[3.0] > before + 0.3, (len(examples), before, results)
    assert results[3.0] > results[0.0] + 0.3, (len(examples), before, results)  # the reweighting lifts the tail


def test_cli_end_to_end_writes_checkpoint(tiny_sft, synth_data, tmp_path, capsys):
    """``rlhf-ray lpo`` through the real CLI entry point, in this process (train.num_workers = 0: no Ray)."""
    from rlhf_ray.cli import main

    out = tmp_path / "lpo-ckpt"
    cfg = tmp_path / "lpo.yaml"
    cfg.write_text("n_negatives: 4\nmax_history: 20\nsampler: uniform\n"
                   "train: {batch_size: 8, max_steps: 3, epochs: 1, progress: false, tensorboard: false}\n")
    rc = main(["lpo", "--sft", str(tiny_sft), "--data", str(synth_data), "--out", str(out), "--config", str(cfg),
               "--loss", "sdpo", "--sampler", "gumbel", "--tau", "0.5", "--json"])
    stdout = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads(stdout[stdout.index("{\n"):])
    assert metrics["train/steps"] == 3 and "val/tail_ndcg@10" in metrics
    manifest = verify_checkpoint(out)
    assert manifest["stage"] == "lpo" and manifest["parent"]["stage"] == "sft"
    c = manifest["config"]
    got = (c["loss"], c["sampler"], c["tau"], c["n_negatives"], c["train"]["batch_size"])
    assert got == ("sdpo", "gumbel", 0.5, 4, 8)  # flags over the file over the defaults
    new, old = load_checkpoint(out), load_checkpoint(tiny_sft)
    diff = [not torch.equal(a, b) for a, b in zip(new.model.state_dict().values(), old.model.state_dict().values())]
    assert any(diff)


@pytest.mark.parametrize("flags,needle", [
    (["--tau", "0"], "tau"),
    (["--n-negatives", "0"], "n_negatives"),
    (["--loss", "ppo"], "--loss"),
    (["--pool", "torso"], "--pool"),
])
def test_bad_values_exit_2(tiny_sft, synth_data, tmp_path, capsys, flags, needle):
    from rlhf_ray.cli import main

    argv = ["lpo", "--sft", str(tiny_sft), "--data", str(synth_data), "--out", str(tmp_path / "x"), *flags]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse rejects a value outside the choices
        rc = e.code
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_config_file_and_missing_sft_exit_2(synth_data, tmp_path, capsys):
    from rlhf_ray.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("loss: ppo\n")
    base = ["lpo", "--data", str(synth_data), "--out", str(tmp_path / "x")]
    assert main([*base, "--sft", str(tmp_path), "--config", str(cfg)]) == 2
    assert "loss" in capsys.readouterr().err
    assert main([*base, "--sft", str(tmp_path / "nope")]) == 2  # not a checkpoint
    assert "checkpoint" in capsys.readouterr().err
