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


# New embedding rows (specials a base tokenizer lacked, items, users) start at the mean of the
# pretrained rows plus this fraction of their per-dimension spread as noise.
NEW_ROW_NOISE = 0.1


def build_model(cfg: ModelConfig, vocab: Vocab, n_base: int | None = None) -> nn.Module:
    """A causal LM sized for ``vocab``: GPT-2 from ``cfg`` sizes, or ``cfg.base_model`` grown
    to ``vocab.size`` (:func:`load_base_model`; ``n_base``: the base tokenizer's size)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.base_model:
        model = load_base_model(cfg.base_model, vocab, n_base)
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
    fast_activations(model)
    if cfg.lora:
        model = add_lora(model, cfg, vocab)
    return model


def load_base_model(path: str, vocab: Vocab, n_base: int | None = None) -> nn.Module:
    """A pretrained causal LM (fp32) whose embeddings are grown to ``vocab.size`` for the tokens
    appended to its tokenizer (:func:`rlhf_ray.tokens.extend_tokenizer`).

    Rows ``[0, n_base)`` (the base tokenizer's ids; default ``vocab.n_text``) are the pretrained
    ones, untouched, so every original token keeps its meaning. Every row from ``n_base`` on
    (the added specials, ``<item_i>``, ``<user_u>``) starts at the mean of the pretrained rows
    plus a little noise (:data:`NEW_ROW_NOISE` times their per-dimension standard deviation,
    fixed seed): like transformers' ``mean_resizing``, a new token's logit starts near an
    average token's, neither dominating the softmax nor vanishing from it, and the noise
    makes the item tokens differ from one another from the first step. An untied output
    layer gets the same treatment (its bias, if any, the mean bias).
    """
    from transformers import AutoModelForCausalLM

    from rlhf_ray.config import ConfigError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.base_model {path}: cannot load a causal LM: {e}") from None
    rows = model.get_input_embeddings().num_embeddings
    keep = vocab.n_text if n_base is None else n_base
    if keep > rows:
        raise ConfigError(f"model.base_model {path}: its tokenizer has {keep} tokens but the model embeds only "
                          f"{rows}; the tokenizer does not belong to this model")
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    init_new_rows(model, keep)
    fast_activations(model)
    for conf in (model.config, getattr(model, "generation_config", None)):
        if conf is not None:
            conf.pad_token_id, conf.bos_token_id, conf.eos_token_id = vocab.pad, vocab.bos, vocab.eos
    return model


def fast_activations(model: nn.Module) -> nn.Module:
    """Swap GPT-2's ``gelu_new`` (tanh-approximate GELU written as five elementwise torch ops)
    for the same function as one fused kernel (``gelu_pytorch_tanh``), in place; returns ``model``.

    The two agree to float rounding (|diff| < 1e-6 on activations of size 10), and the fused one
    takes a 2-layer, 128-wide policy's training step from 126 to 74 ms on one CPU thread (the
    python form materialises four temporaries of the MLP's widest activation). The config
    follows, so a checkpoint saved afterwards reloads with the fused kernel; checkpoints saved
    with ``gelu_new`` are converted when loaded (:func:`rlhf_ray.checkpoint.load_checkpoint`).
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
    for conf in {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}.values():
        for field in ("activation_function", "hidden_act"):
            if getattr(conf, field, None) == "gelu_new":
                setattr(conf, field, "gelu_pytorch_tanh")
    return model


@torch.no_grad()
def init_new_rows(model: nn.Module, start: int, noise: float = NEW_ROW_NOISE, seed: int = 0) -> None:
    """Set embedding rows ``[start, V)`` (input and, if untied, output) to mean + noise of rows
    ``[0, start)`` (see :func:`load_base_model`)."""
    gen = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    mats = [emb] + ([out.weight] if out is not None and out.weight.data_ptr() != emb.data_ptr() else [])
    for w in mats:
        n_new = w.shape[0] - start
        if n_new <= 0:
            continue
        old = w[:start].float()
        new = old.mean(0) + noise * old.std(0) * torch.randn(n_new, w.shape[1], generator=gen)
        w[start:] = new.to(w.dtype)
    bias = getattr(out, "bias", None) if out is not None else None
    if bias is not None and bias.shape[0] > start:
        bias[start:] = bias[:start].float().mean().to(bias.dtype)


def context_length(model: nn.Module) -> int | None:
    """Positions the model can attend over (``n_positions`` or ``max_position_embeddings``), if it says."""
    conf = unwrap(model).config
    n = getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None)
    return int(n) if n else None


def add_lora(model: nn.Module, cfg: ModelConfig, vocab: Vocab) -> nn.Module:
    """Wrap ``model`` with LoRA adapters; the item/user and special-token embeddings stay
    trainable (a base model's added specials start at the mean row like the items)."""
    from peft import LoraConfig, get_peft_model

    specials = {vocab.pad, vocab.bos, vocab.eos, vocab.hist, vocab.page, vocab.sep, vocab.meta}
    new_tokens = sorted(specials | set(range(vocab.item_offset, vocab.size)))
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


def base_lm(model: nn.Module) -> nn.Module:
    """The HF model under every wrapper, peft's included (its base model, adapters in place)."""
    m = unwrap(model)
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def hidden_size(model: nn.Module) -> int:
    """Width of the final hidden state (``config.hidden_size``; GPT-2 aliases it to n_embd)."""
    return unwrap(model).config.hidden_size


def train_top_blocks(model: nn.Module, n: int) -> dict[str, int]:
    """Freeze the backbone of ``model`` except its top ``n`` transformer blocks and what follows
    them (the final layer norm); ``n < 0`` leaves every weight trainable. Modules outside the
    backbone (the heads a stage adds) are not touched. Blocks are the backbone's
    ``nn.ModuleList`` (GPT-2's ``h``, Llama's ``layers``); embeddings stay frozen whenever
    ``n >= 0``. Returns ``{"trainable": ..., "frozen": ...}`` parameter counts of the backbone."""
    m = base_lm(model)
    body = getattr(m, getattr(m, "base_model_prefix", ""), None)
    if n >= 0:
        blocks = [c for c in (body.children() if body is not None else []) if isinstance(c, nn.ModuleList)]
        if body is None or len(blocks) != 1:
            raise ValueError(f"cannot find the transformer blocks of {type(m).__name__} (expected one "
                             f"nn.ModuleList in its backbone) to train only the top {n}")
        for p in m.parameters():
            p.requires_grad_(False)
        top = list(blocks[0])[len(blocks[0]) - n:] if n else []
        after = [c for c in body.children() if c is not blocks[0] and not isinstance(c, nn.Embedding)]
        for mod in top + after:
            for p in mod.parameters():
                p.requires_grad_(True)
    counts = {"trainable": 0, "frozen": 0}
    for p in m.parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


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
    m = base_lm(model)
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
    m = base_lm(model)
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
