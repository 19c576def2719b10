"""Build or load the policy backbone, and the small heads stages put on it.

The policy is a plain HF causal LM (GPT-2 built from a config, or any
``AutoModelForCausalLM`` directory) whose vocabulary is the layout of
:class:`rlhf_ray.tokens.Vocab`. Heads (rating, value, page reward, item reward)
are separate ``nn.Module``s so the backbone stays loadable by transformers alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_ray.config import ModelConfig
from rlhf_ray.tokens import Vocab


def build_model(cfg: ModelConfig, vocab: Vocab) -> nn.Module:
    """A causal LM sized for ``vocab``: GPT-2 from ``cfg`` sizes, or ``cfg.base_model`` resized."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if cfg.base_model:
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model)
        if model.get_input_embeddings().num_embeddings != vocab.size:
            model.resize_token_embeddings(vocab.size)
        model.config.pad_token_id = vocab.pad
        model.config.bos_token_id = vocab.bos
        model.config.eos_token_id = vocab.eos
    else:
        conf = GPT2Config(
            vocab_size=vocab.size,
            n_positions=cfg.n_positions,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=vocab.bos,
            eos_token_id=vocab.eos,
            pad_token_id=vocab.pad,
        )
        model = GPT2LMHeadModel(conf)
    if cfg.lora:
        model = add_lora(model, cfg, vocab)
    return model


def add_lora(model: nn.Module, cfg: ModelConfig, vocab: Vocab) -> nn.Module:
    """Wrap ``model`` with LoRA adapters; item/user token embeddings stay trainable."""
    from peft import LoraConfig, get_peft_model

    new_tokens = list(range(vocab.item_offset, vocab.size))
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        trainable_token_indices=new_tokens,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain HF model under DeepSpeed/DDP/peft wrappers (peft adapters merged copies not made)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def hidden_size(model: nn.Module) -> int:
    """Width of the final hidden state (``config.hidden_size``; GPT-2 aliases it to n_embd)."""
    return unwrap(model).config.hidden_size


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden: bool = False):
    """One causal-LM forward with padding-aware positions.

    Returns ``logits (B, T, V)`` and, if ``hidden``, the final hidden states ``(B, T, H)``.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        output_hidden_states=hidden,
        use_cache=False,
    )
    if hidden:
        return out.logits, out.hidden_states[-1]
    return out.logits


def backbone_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``(B, T, H)`` without the vocabulary projection (heads only need these).

    Uses the HF backbone (``model.<base_model_prefix>``, e.g. ``transformer`` for GPT-2);
    falls back to a full forward for models that do not expose one.
    """
    m = unwrap(model)
    if hasattr(m, "get_base_model"):  # peft
        m = m.get_base_model()
    body = getattr(m, getattr(m, "base_model_prefix", ""), None)
    if body is None or body is m:
        return forward(model, input_ids, attention_mask, hidden=True)[1]
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
               use_cache=False)
    return out.last_hidden_state


def item_rows(model: nn.Module, vocab: Vocab, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output projection's rows ``(n, H)`` and bias ``(n,)`` (None without one) of ``items`` (n,):
    item logits are ``hidden @ rows.T + bias`` for the models built here (GPT-2, tied embeddings), so
    a few items can be scored without the whole-vocabulary projection (sampled softmax).

    One gather from the whole weight: its gradient is one dense (V, H) buffer however many
    items are read, so callers gather every row a step needs at once."""
    m = unwrap(model)
    if hasattr(m, "get_base_model"):  # peft
        m = m.get_base_model()
    head = m.get_output_embeddings()
    tokens = items + vocab.item_offset
    bias = getattr(head, "bias", None)
    return F.embedding(tokens, head.weight), None if bias is None else bias[tokens]


class ScalarHead(nn.Module):
    """Linear map from a hidden state to one scalar per position: rating, value or reward."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (..., H) -> (...)
        return self.proj(h).squeeze(-1)


class Heads(nn.Module):
    """Named scalar heads saved beside the backbone in ``heads.safetensors``."""

    def __init__(self, hidden: int, names: list[str]):
        super().__init__()
        self.hidden = hidden
        self.heads = nn.ModuleDict({n: ScalarHead(hidden) for n in names})

    def __getitem__(self, name: str) -> ScalarHead:
        return self.heads[name]

    def __contains__(self, name: str) -> bool:
        return name in self.heads

    @property
    def names(self) -> list[str]:
        return list(self.heads.keys())
