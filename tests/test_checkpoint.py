"""Checkpoint directory: round trip, transformers compatibility, tamper and incompleteness detection."""
import json
import re
import shutil

import pytest
import torch

from rlhf_ray.checkpoint import MANIFEST, load_checkpoint, verify_checkpoint
from rlhf_ray.cli import main
from rlhf_ray.errors import CheckpointError
from rlhf_ray.generation import build_prompts, score_items


def test_round_trip_and_transformers_loads_it(tiny_sft, synth_data):
    from transformers import AutoModelForCausalLM

    ck = load_checkpoint(tiny_sft)
    assert ck.stage == "sft"
    m = json.loads((tiny_sft / MANIFEST).read_text())
    assert m["data_fingerprint"] == json.loads((synth_data / "stats.json").read_text())["fingerprint"]
    assert {"torch", "transformers"} <= set(m["versions"])
    assert "model.safetensors" in m["files"] and len(m["files"]["model.safetensors"]) == 64
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_sft)).eval()
    prompts = build_prompts([[1, 2, 3]], ck.vocab, 20)
    torch.testing.assert_close(score_items(hf, ck.vocab, prompts), score_items(ck.model.eval(), ck.vocab, prompts))
    assert len(ck.catalog) == ck.vocab.n_items
    assert ck.tokenizer.convert_tokens_to_ids(f"<item_{ck.vocab.n_items - 1}>") == ck.vocab.item_offset + ck.vocab.n_items - 1


def test_tokenizer_is_built_on_first_use_and_saved_unbuilt_by_copy(tiny_sft, tmp_path):
    """A loaded checkpoint's tokenizer is a stand-in (building it costs ~40 s at 1M items and
    ranking never needs it): len() from the layout, built by the first attribute or call, and
    an unbuilt one is saved by copying its files byte for byte."""
    import pickle

    from rlhf_ray.tokens import SavedTokenizer, load_tokenizer, save_tokenizer

    ck = load_checkpoint(tiny_sft)
    tok = ck.tokenizer
    assert isinstance(tok, SavedTokenizer) and not tok.loaded
    assert len(tok) == ck.vocab.size and not tok.loaded
    copy = pickle.loads(pickle.dumps(tok))  # Ray ships it as its directory, unbuilt
    assert not copy.loaded and len(copy) == ck.vocab.size
    save_tokenizer(tok, ck.vocab, tmp_path / "copied")
    assert not tok.loaded
    src = tiny_sft / "tokenizer"
    assert sorted(p.name for p in (tmp_path / "copied").iterdir()) == sorted(p.name for p in src.iterdir())
    for f in src.iterdir():
        assert (tmp_path / "copied" / f.name).read_bytes() == f.read_bytes(), f.name
    ids = tok("a title | Drama", add_special_tokens=False)["input_ids"]  # a call builds it
    assert tok.loaded and ids and max(ids) < ck.vocab.n_text
    assert tok.convert_ids_to_tokens(ck.vocab.item_offset) == "<item_0>"
    save_tokenizer(tok, ck.vocab, tmp_path / "rewritten")  # built: written by save_pretrained
    again, vocab = load_tokenizer(tmp_path / "rewritten")
    assert vocab == ck.vocab and again("a title | Drama", add_special_tokens=False)["input_ids"] == ids
    layout = json.loads((src / "rlhf_ray_vocab.json").read_text())
    (tmp_path / "short").mkdir()
    shutil.copy(src / "tokenizer.json", tmp_path / "short" / "tokenizer.json")
    (tmp_path / "short" / "rlhf_ray_vocab.json").write_text(json.dumps({**layout, "n_users": layout["n_users"] + 1}))
    short, _ = load_tokenizer(tmp_path / "short")
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens but the layout says"):
        short.load()
    (tmp_path / "bad").mkdir()
    shutil.copy(src / "tokenizer.json", tmp_path / "bad" / "tokenizer.json")
    (tmp_path / "bad" / "rlhf_ray_vocab.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="rlhf_ray_vocab.json: not a token layout"):
        load_tokenizer(tmp_path / "bad")


def test_checkpoint_saved_with_gelu_new_loads_with_the_fused_kernel(tiny_sft, tmp_path):
    """Checkpoints written before the fused GELU (config ``gelu_new``) load converted, and score
    as the python form does to float rounding."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    old = tmp_path / "old"
    shutil.copytree(tiny_sft, old)
    conf = json.loads((old / "config.json").read_text())
    assert conf["activation_function"] == "gelu_pytorch_tanh"  # what checkpoints are written with now
    conf["activation_function"] = "gelu_new"
    (old / "config.json").write_text(json.dumps(conf))
    ck = load_checkpoint(old, verify=False)
    assert any(isinstance(m, GELUTanh) for m in ck.model.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in ck.model.modules())
    python_form = AutoModelForCausalLM.from_pretrained(str(old)).eval()
    assert any(isinstance(m, NewGELUActivation) for m in python_form.modules())
    prompts = build_prompts([[1, 2, 3], [4]], ck.vocab, 20)
    torch.testing.assert_close(score_items(ck.model.eval(), ck.vocab, prompts),
                               score_items(python_form, ck.vocab, prompts), rtol=0, atol=1e-5)


def test_tampered_weights_are_detected(tiny_sft, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_sft, bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    with pytest.raises(CheckpointError, match="model.safetensors does not match"):
        verify_checkpoint(bad)


@pytest.mark.parametrize("remove", ["manifest.json", "catalog.parquet", "tokenizer/tokenizer.json"])
def test_incomplete_checkpoint_is_refused(tiny_sft, tmp_path, remove):
    bad = tmp_path / "incomplete"
    shutil.copytree(tiny_sft, bad)
    (bad / remove).unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


@pytest.mark.parametrize("text", [b'{"stage": "sft", "fi', b'{"stage": "\xff"}', b'["sft"]'])
def test_corrupt_manifest_is_refused_by_name(tiny_sft, tmp_path, text):
    """Truncated, not UTF-8, or JSON that is not an object: a CheckpointError naming the file."""
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_sft, bad)
    (bad / MANIFEST).write_bytes(text)
    with pytest.raises(CheckpointError, match=re.escape(f"{(bad / MANIFEST).resolve()}: corrupt manifest")):
        load_checkpoint(bad)


def test_cli_eval_on_bad_checkpoint_exits_2(tiny_sft, synth_data, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_sft, bad)
    (bad / "catalog.parquet").write_bytes(b"garbage")
    assert main(["eval", "--checkpoint", str(bad), "--data", str(synth_data)]) == 2
    assert "catalog.parquet does not match" in capsys.readouterr().err


def test_cli_eval_on_other_dataset_exits_2(tiny_sft, tmp_path, capsys):
    from rlhf_ray.config import DataConfig
    from rlhf_ray.data.prepare import prepare

    other = tmp_path / "other"
    prepare(DataConfig(dataset="synthetic", synthetic_users=60, synthetic_items=90, seed=11), other, log=lambda s: None)
    assert main(["eval", "--checkpoint", str(tiny_sft), "--data", str(other)]) == 2
    assert "does not match the catalogue" in capsys.readouterr().err


def test_save_is_atomic_on_failure(tiny_sft, tmp_path):
    """A failing save leaves the previous checkpoint intact and no temp dirs behind."""
    from rlhf_ray.checkpoint import save_checkpoint

    ck = load_checkpoint(tiny_sft)
    target = tmp_path / "ck"
    shutil.copytree(tiny_sft, target)
    before = (target / MANIFEST).read_text()
    import pandas as pd

    unwritable = pd.DataFrame({"item": [object()] * ck.vocab.n_items})  # pyarrow cannot store it
    with pytest.raises(Exception, match="object"):
        save_checkpoint(target, stage="sft", model=ck.model, tokenizer=ck.tokenizer, vocab=ck.vocab,
                        catalog=unwritable, config={}, data_fingerprint="f")
    assert (target / MANIFEST).read_text() == before
    verify_checkpoint(target)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_lora_export_merges_the_given_state_so_transformers_loads_it(tiny_sft, tmp_path):
    """A LoRA policy exports merged plain weights: the state handed in (peft's names, what a
    stage's exporter passes) is the one merged, adapters and trainable token rows both, in fp32
    whatever the live model's dtype, and transformers alone reproduces its scores."""
    import copy

    from transformers import AutoModelForCausalLM

    from rlhf_ray.checkpoint import save_checkpoint
    from rlhf_ray.config import ModelConfig
    from rlhf_ray.model import add_lora

    ck = load_checkpoint(tiny_sft)
    lora = add_lora(ck.model, ModelConfig(lora=True, lora_r=4), ck.vocab).eval()
    trained = {k: v.clone() for k, v in lora.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    deltas = [k for k in trained if "lora_B" in k or "trainable_tokens_delta" in k]
    assert any("trainable_tokens_delta" in k for k in deltas)  # the item/user rows' own update
    for k in deltas:  # zero at init: give the adapters and token rows something to merge
        trained[k].copy_(torch.randn(trained[k].shape, generator=g) * 0.05)
    live = copy.deepcopy(lora).to(torch.bfloat16)  # trained in bf16: the export still merges in fp32
    out = save_checkpoint(tmp_path / "lora", stage="sft", model=live, tokenizer=ck.tokenizer, vocab=ck.vocab,
                          catalog=ck.catalog, config={}, data_fingerprint="", state_dict=trained)
    assert any("lora_A" in k for k in lora.state_dict())  # the live model keeps its adapters
    lora.load_state_dict(trained)
    prompts = build_prompts([[1, 2, 3]], ck.vocab, 20)
    want = score_items(lora, ck.vocab, prompts)
    base = score_items(load_checkpoint(tiny_sft).model.eval(), ck.vocab, prompts)
    seen = torch.isfinite(base)  # masked tokens score -inf on both
    assert (want[seen] - base[seen]).abs().max() > 1e-3  # the adapters move the scores: merging shows
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not any("lora" in k or "trainable_tokens" in k for k in hf.state_dict())
    assert all(v.dtype == torch.float32 for v in hf.state_dict().values() if v.is_floating_point())
    torch.testing.assert_close(score_items(hf, ck.vocab, prompts), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score_items(load_checkpoint(out).model.eval(), ck.vocab, prompts), want,
                               atol=1e-4, rtol=1e-4)


def test_sft_with_lora_exports_the_weights_it_validated(synth_data, tmp_path):
    """A LoRA SFT run (the stage's exporter, its best-epoch state) writes a plain checkpoint whose
    validation NDCG@10, measured again on the loaded weights, is the one the run recorded."""
    from conftest import TINY_MODEL

    from rlhf_ray.config import GenerationConfig, SFTConfig
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.evaluation import evaluate
    from rlhf_ray.stages import sft

    train = {"epochs": 2, "batch_size": 16, "progress": False, "tensorboard": False, "max_steps": 6,
             "patience": 0, "lr": 1e-2}
    cfg = SFTConfig.from_dict({"model": {**TINY_MODEL, "lora": True, "lora_r": 4}, "train": train,
                               "max_history": 20, "page_size": 5})
    metrics = sft.run(cfg, str(synth_data), str(tmp_path / "lora"))
    ck = load_checkpoint(tmp_path / "lora")
    assert not any("lora" in k for k in ck.model.state_dict())
    again, _ = evaluate(ck.model.eval(), ck.vocab, load_prepared(synth_data), "valid",
                        GenerationConfig(**cfg.prompt.to_dict()), ks=(10, 20), pages=False, prefix="val/")
    assert again["val/ndcg@10"] == pytest.approx(metrics["val/ndcg@10"], abs=1e-6)
