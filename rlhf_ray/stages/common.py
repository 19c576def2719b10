"""What every stage does the same way: open data, start a policy, export a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from torch import nn

from rlhf_ray.checkpoint import catalog_mismatch, load_checkpoint, save_checkpoint
from rlhf_ray.config import ConfigError, ModelConfig, PromptConfig
from rlhf_ray.errors import DataError
from rlhf_ray.model import Heads, build_model
from rlhf_ray.tokens import extend_tokenizer, meta_texts, train_tokenizer

CATALOG_COLUMNS = ["item_idx", "item", "title", "category", "categories", "popularity", "is_tail"]


def open_data(path: str | Path):
    from rlhf_ray.data.prepared import load_prepared

    return load_prepared(path)


def catalog_frame(prepared) -> pd.DataFrame:
    items = prepared.items
    return items[[c for c in CATALOG_COLUMNS if c in items.columns]].reset_index(drop=True)


def check_compatible(catalog: pd.DataFrame, prepared, where: str) -> None:
    """The data's items must be exactly the checkpoint's catalogue, in the same order."""
    detail = catalog_mismatch(catalog["item"].astype(str).tolist(), prepared.items["item"].astype(str).tolist())
    if detail:
        raise DataError(f"the prepared data does not match the catalogue of checkpoint {where}: {detail}. "
                        f"Prepare the data with the same dataset and filtering as that checkpoint.")


def check_history(manifest: dict | None, cfg, where: str) -> None:
    """A stage that continues a checkpoint trained on the page prompt keeps its history length:
    ``cfg.max_history`` (a :class:`PromptConfig`) must equal ``manifest["prompt"]["max_history"]``.
    Pre-training has no page prompt, so SFT from it may choose any length. A checkpoint written
    before manifests recorded ``prompt`` is read by its stage config's ``max_history``.
    ConfigError naming both."""
    m = manifest or {}
    trained = None if m.get("stage") == "pretrain" else \
        (m.get("prompt") or {}).get("max_history", (m.get("config") or {}).get("max_history"))
    if trained is None or not isinstance(cfg, PromptConfig) or int(trained) == int(cfg.max_history):
        return
    raise ConfigError(f"max_history: {cfg.max_history}, but checkpoint {where} was trained on prompts of {trained} "
                      f"history items; set max_history: {trained} (a model is trained, scored and served on one "
                      f"prompt: positions it never learned would be read)")


def init_policy(init: str | None, model_cfg: ModelConfig | None, prepared):
    """Start from a checkpoint (``init``) or build a fresh tokenizer + model for ``prepared``
    (``model_cfg``: the sizes; None for a stage that always starts from a checkpoint).

    Fresh: with ``model_cfg.base_model`` the base model's own tokenizer is kept for text and
    the specials, item (and user) tokens are appended to it, the model's embeddings grown to
    match (:func:`rlhf_ray.tokens.extend_tokenizer`, :func:`rlhf_ray.model.load_base_model`);
    otherwise a BPE is trained on the catalogue's text and a GPT-2 built from the sizes.

    Returns ``(model, tokenizer, vocab, catalog, parent_manifest_or_None)``.
    """
    if init or model_cfg is None:
        ck = load_checkpoint(init)
        check_compatible(ck.catalog, prepared, str(init))
        return ck.model, ck.tokenizer, ck.vocab, ck.catalog, ck.manifest
    items = prepared.items
    n_users = len(prepared.users) if model_cfg.user_tokens else 0
    if model_cfg.base_model:
        tok, vocab, n_base = extend_tokenizer(model_cfg.base_model, n_items=len(items), n_users=n_users)
        model = build_model(model_cfg, vocab, n_base)
    else:
        texts = meta_texts(items["title"].astype(str).tolist(), [list(c) for c in items["categories"]])
        tok, vocab = train_tokenizer(texts, n_items=len(items), n_users=n_users,
                                     vocab_size=model_cfg.text_vocab_size)
        model = build_model(model_cfg, vocab)
    return model, tok, vocab, catalog_frame(prepared), None


def split_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def ref(manifest: dict | None) -> dict | None:
    """How a manifest names another checkpoint: ``{"id", "stage"}`` (what reuse checks compare)."""
    return {"id": manifest["id"], "stage": manifest["stage"]} if manifest else None


def lineage(parent: dict | None, prompt=None, inputs: dict[str, dict] | None = None) -> dict:
    """Manifest entries every stage writes: the checkpoint it started from (``parent``), the
    other checkpoints it read (``inputs``: name -> ref) and the prompt it was trained with."""
    out = {"parent": ref(parent), "inputs": inputs or {}}
    if prompt is not None:
        out["prompt"] = prompt.prompt.to_dict()
    return out


def exporter(out_dir: str | Path, *, stage: str, lm: nn.Module, tokenizer, vocab, catalog, config,
             prepared, heads: Heads | None = None, parent: dict | None = None,
             extra: Callable[[dict], dict] | None = None):
    """An ``export(state, metrics)`` for :class:`StageSpec`: the module's state dict has
    ``lm.`` (backbone) and ``heads.`` (scalar heads) parts. ``config``: the stage's Config
    (recorded, with its prompt when it has one)."""
    from rlhf_ray.config import PromptConfig

    prompt = config if isinstance(config, PromptConfig) else None

    def export(state: dict | None, metrics: dict) -> Path | None:
        if state is None:
            return None
        lm_state = split_state(state, "lm.")
        head_mod = None
        if heads is not None:
            head_mod = Heads(heads.hidden, heads.names)
            head_mod.load_state_dict(split_state(state, "heads."))
        info = lineage(parent, prompt)
        if extra is not None:
            info.update(extra(metrics))
        return save_checkpoint(
            out_dir, stage=stage, model=lm, tokenizer=tokenizer, vocab=vocab, catalog=catalog,
            config=config.to_dict(), data_fingerprint=prepared.stats.get("fingerprint", ""), metrics=metrics,
            heads=head_mod, state_dict=lm_state, extra=info,
        )

    return export


def load_lm_state(lm: nn.Module, state: dict) -> None:
    missing, unexpected = lm.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith("attn.bias") and "lm_head" not in k]
    if bad or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {bad[:5]}, unexpected {unexpected[:5]}")



def ranking_validator(prepared, vocab, prompt, max_users: int):
    """``validate(module)`` for a policy stage: full-ranking metrics of ``module.lm`` on the valid
    split (``val/`` prefix, K = 10, 20), prompts built from the stage's ``prompt`` config and, with
    user tokens, each user's token (through :func:`rlhf_ray.evaluation.evaluate`, as the test
    evaluation builds them)."""
    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.evaluation import evaluate

    gen = GenerationConfig(**prompt.prompt.to_dict())

    def validate(mod: nn.Module) -> dict:
        m, _ = evaluate(mod.lm, vocab, prepared, "valid", gen, ks=(10, 20), max_users=max_users, pages=False,
                        prefix="val/")
        return m

    return validate


def run_stage(build_spec: Callable, cfg, data_dir: str, out_dir: str, init: str | None,
              model_cfg: ModelConfig | None) -> dict:
    """What every supervised stage's ``run`` does: open the data, start the policy (from ``init``
    or fresh from ``model_cfg``; fresh weights and new heads drawn from ``cfg.train.seed``), build
    the stage's :class:`StageSpec` and :func:`fit` it, logging to ``<out>.logs``. Any of the
    locations may be a storage URI: inputs are read through this node's copy, and the checkpoint
    and logs are written locally and published there at the end (:func:`rlhf_ray.storage.staged`;
    on a Ray Train worker group only rank 0 writes any)."""
    from rlhf_ray.seeding import seed_everything
    from rlhf_ray.stages.loop import fit
    from rlhf_ray.stages.runlog import log_dir
    from rlhf_ray.storage import is_uri, staged

    prepared = open_data(data_dir)
    # a fresh model's weights and the stage's new heads (pre-training's rating head, the reward
    # heads) are drawn here, before fit() seeds training: without this they came from the
    # process's unseeded torch RNG, and two runs of one config differed (pre-training's
    # next-token loss after 40 steps 6.39 against 8.01). The same seed on every rank.
    seed_everything(cfg.train.seed, "build")
    lm, tokenizer, vocab, catalog, parent = init_policy(init, model_cfg, prepared)
    check_history(parent, cfg, str(init))
    with staged(out_dir) as local_out:
        spec = build_spec(cfg, prepared, lm, tokenizer, vocab, catalog, local_out, parent)
        metrics = fit(spec, cfg.train, log_dir(local_out))
    if is_uri(out_dir) and "checkpoint" in metrics:
        metrics["checkpoint"] = out_dir
    return metrics


def check_context(lm: nn.Module, vocab, max_history: int, page_tokens: int, what: str = "page") -> None:
    """The prompt (``<bos> [<user>] <hist> h_1..h_L <page>``) plus ``page_tokens`` more tokens must fit
    the model's positions (a pretrained ``model.base_model`` brings its own); otherwise a
    :class:`ConfigError` naming ``max_history``."""
    from rlhf_ray.config import ConfigError
    from rlhf_ray.model import context_length

    n_pos = context_length(lm)
    need = 3 + (1 if vocab.n_users else 0) + max_history + page_tokens
    if n_pos and need > n_pos:
        raise ConfigError(f"max_history: a prompt of {max_history} history items + the {what} needs {need} "
                          f"positions but the model has {n_pos}; lower max_history")
