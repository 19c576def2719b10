"""What every stage does the same way: open data, start a policy, export a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from rlhf_ray.checkpoint import load_checkpoint, save_checkpoint
from rlhf_ray.config import ModelConfig
from rlhf_ray.errors import DataError
from rlhf_ray.model import Heads, build_model
from rlhf_ray.tokens import meta_texts, train_tokenizer

CATALOG_COLUMNS = ["item_idx", "item", "title", "category", "categories", "popularity", "is_tail"]


def open_data(path: str | Path):
    from rlhf_ray.data.prepared import load_prepared

    return load_prepared(path)


def catalog_frame(prepared) -> pd.DataFrame:
    items = prepared.items
    return items[[c for c in CATALOG_COLUMNS if c in items.columns]].reset_index(drop=True)


def check_compatible(catalog: pd.DataFrame, prepared, where: str) -> None:
    """The data's items must be exactly the checkpoint's catalogue, in the same order."""
    data_items = prepared.items["item"].astype(str).tolist()
    ckpt_items = catalog["item"].astype(str).tolist()
    if data_items != ckpt_items:
        unknown = sorted(set(data_items) - set(ckpt_items))
        detail = f"{len(unknown)} item(s) not in its catalogue, e.g. {unknown[:5]}" if unknown else \
            "the same items in a different order / subset"
        raise DataError(f"the prepared data does not match the catalogue of checkpoint {where}: {detail}. "
                        f"Prepare the data with the same dataset and filtering as that checkpoint.")


def init_policy(init: str | None, model_cfg: ModelConfig, prepared):
    """Start from a checkpoint (``init``) or build a fresh tokenizer + model for ``prepared``.

    Returns ``(model, tokenizer, vocab, catalog, parent_manifest_or_None)``.
    """
    if init:
        ck = load_checkpoint(init)
        check_compatible(ck.catalog, prepared, str(init))
        return ck.model, ck.tokenizer, ck.vocab, ck.catalog, ck.manifest
    items = prepared.items
    texts = meta_texts(items["title"].astype(str).tolist(), [list(c) for c in items["categories"]])
    n_users = len(prepared.users) if model_cfg.user_tokens else 0
    tok, vocab = train_tokenizer(texts, n_items=len(items), n_users=n_users, vocab_size=model_cfg.text_vocab_size)
    model = build_model(model_cfg, vocab)
    return model, tok, vocab, catalog_frame(prepared), None


def split_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def exporter(out_dir: str | Path, *, stage: str, lm: nn.Module, tokenizer, vocab, catalog, config: dict,
             prepared, heads: Heads | None = None, parent: dict | None = None,
             extra: Callable[[dict], dict] | None = None):
    """An ``export(state, metrics)`` for :class:`StageSpec`: the module's state dict has
    ``lm.`` (backbone) and ``heads.`` (scalar heads) parts."""

    def export(state: dict | None, metrics: dict) -> Path | None:
        if state is None:
            return None
        lm_state = split_state(state, "lm.")
        head_mod = None
        if heads is not None:
            head_mod = Heads(heads.hidden, heads.names)
            head_mod.load_state_dict(split_state(state, "heads."))
        info = {"parent": {"id": parent["id"], "stage": parent["stage"]} if parent else None}
        if extra is not None:
            info.update(extra(metrics))
        return save_checkpoint(
            out_dir, stage=stage, model=lm, tokenizer=tokenizer, vocab=vocab, catalog=catalog,
            config=config, data_fingerprint=prepared.stats.get("fingerprint", ""), metrics=metrics,
            heads=head_mod, state_dict=lm_state, extra=info,
        )

    return export


def load_lm_state(lm: nn.Module, state: dict) -> None:
    missing, unexpected = lm.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith("attn.bias") and "lm_head" not in k]
    if bad or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {bad[:5]}, unexpected {unexpected[:5]}")


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
