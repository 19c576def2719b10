"""PolicyActor: one rank of the trained policy (PPO clipped surrogate + entropy bonus [+ ptx]).

    L = L_clip(rho, A) - entropy_coef * H(pi(. | s_t))                  (losses.ppo_policy_loss)
        + ptx_coef * L_next(history) + ptx_page_coef * L_rank(held-out page)
    rho_t = pi_theta(a_t | s_t) / pi_old(a_t | s_t)

PPO-ptx mixes SFT's own two losses back in (InstructGPT mixes the pre-training loss): L_next over
the prompt's history, and L_rank, SFT's page loss, on the page SFT teaches after the prompt (the
training positives the rollout prompt held out, :func:`actors.experience.held_out_pages`). Only
L_rank trains the ``<page>`` position, whose logits are the full ranking evaluation reads.

log pi_theta comes from :func:`rlhf_ray.generation.page_logprobs`, the same restricted
distribution the rollout actors sampled from. Gradient clipping: the Engine
(``train.grad_clip``). ``train`` reads this rank's rows of the prompt batch and of the Experience
from the object store and builds the prompts (tokens, seen-item mask) here.
"""
from __future__ import annotations

import torch

from actors.experience import Experience, PromptBatch
from actors.models import load_policy
from actors.trainer import TrainerActor
from rlhf_ray.config import PPOPolicyConfig
from rlhf_ray.generation import Prompts, page_logprobs, restrict_to
from rlhf_ray.losses import entropy_from_logits, ppo_policy_loss


def restricted_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean entropy of the restricted item distribution; ``logits`` (B, K, N) hold -inf
    at disallowed items. Padded slots (possibly all -inf) are neutralised before the softmax."""
    safe = logits.masked_fill(~mask[..., None], 0.0)
    return entropy_from_logits(safe, mask, allowed=torch.isfinite(safe))


class PolicyActor(TrainerActor):
    def setup(self, sft_dir: str, cfg: PPOPolicyConfig, total_steps: int) -> dict:
        self.cfg = cfg
        self.sft_dir = sft_dir
        ck = load_policy(sft_dir)
        self.vocab = ck.vocab
        self._start_engine(ck.model, cfg.train, total_steps)
        return {"params": sum(p.numel() for p in ck.model.parameters()), "device": str(self.engine.device)}

    def _inputs(self, batch: PromptBatch):
        if self.cfg.ptx_page_coef > 0:  # the held-out pages travel with the prompts' rows
            return batch.prompts(self.vocab), batch.target_pages()
        return batch.prompts(self.vocab)

    def _loss(self, inputs, m: Experience):
        prompts, targets = inputs if isinstance(inputs, tuple) else (inputs, None)
        ptx = self.cfg.ptx_coef > 0
        if targets is not None:  # SFT's page loss, unrestricted by the rollout's shortlist as SFT trains it
            n = self.cfg.ptx_page_slots or targets.shape[1]  # the first n slots (all by default)
            page = page_logprobs(self.engine.module, self.vocab, prompts, targets[:, :n])
            l_rank = -(page["logprobs"].sum() / page["mask"].sum().clamp(min=1))
        prompts = restrict_to(prompts, m.shortlist)  # the rollout's shortlist, if it sampled among one
        out = page_logprobs(self.engine.module, self.vocab, prompts, m.pages, logits_out=True, history_nll=ptx)
        loss, stats = ppo_policy_loss(out["logprobs"], m.logprobs, m.advantages, m.mask, self.cfg.clip_eps)
        if ptx:  # PPO-ptx: SFT's next-item loss on the prompts' histories
            loss = loss + self.cfg.ptx_coef * out["history_nll"]
            stats["ptx_nll"] = float(out["history_nll"].detach())
        if targets is not None:  # and its page loss, which trains the <page> position the ranking is read at
            loss = loss + self.cfg.ptx_page_coef * l_rank
            stats["ptx_page_nll"] = float(l_rank.detach())
        if self.cfg.entropy_coef > 0:
            entropy = restricted_entropy(out["logits"], m.mask)
            loss = loss - self.cfg.entropy_coef * entropy
        else:
            with torch.no_grad():
                entropy = restricted_entropy(out["logits"], m.mask)
        stats["entropy"] = float(entropy.detach())
        return loss, stats

    def train(self, batch: PromptBatch, exp: Experience, epochs: int, seed: int) -> dict[str, float]:
        """PPO epochs over this rank's shard; mean stats (policy_loss, clipfrac, approx_kl, entropy, ...)."""
        return self._fit(batch, exp, epochs, seed, self._loss)

    @torch.no_grad()
    def logprobs(self, batch: PromptBatch, pages: torch.Tensor, shortlist: torch.Tensor | None = None) -> torch.Tensor:
        """(b, K) log pi_theta of given pages (every rank of a ZeRO-3 group must call); ``shortlist``:
        the (b, M) items the pages were sampled among (``Experience.shortlist``), None for all."""
        out = page_logprobs(self.engine.module, self.vocab, restrict_to(batch.prompts(self.vocab), shortlist), pages)
        return out["logprobs"].float().cpu()

    def state_dict(self) -> dict | None:
        """Consolidated weights on rank 0 (None elsewhere): what rollouts load and export writes.
        A collective under ZeRO-3: call on every rank."""
        state = self.engine.full_state_dict()
        return state if self.rank == 0 else None

    def publish_weights(self) -> list | None:
        """Rank 0 puts its consolidated weights in the object store once and returns ``[ref]``
        (a small value: the driver passes the ref on without fetching the weights)."""
        state = self.state_dict()
        if state is None:
            return None
        import ray

        return [ray.put(state)]

    def save_weights(self, weights: list, directory: str) -> None:
        """Rank 0 writes published weights (``[ref]``, :meth:`publish_weights`) to
        ``directory/weights.pt`` (a path every node sees, or a storage URI): the kept policy of
        ``ppo.select`` in a resumable state (:mod:`actors.selection`)."""
        if self.rank != 0:
            return
        import ray

        from rlhf_ray.storage import staged

        with staged(directory, marker=None) as local:
            local.mkdir(parents=True, exist_ok=True)
            torch.save(ray.get(weights[0]), local / "weights.pt")

    def load_weights_file(self, directory: str) -> list | None:
        """Rank 0 puts the weights :meth:`save_weights` wrote in the object store: ``[ref]``."""
        if self.rank != 0:
            return None
        import ray

        from rlhf_ray.storage import fetched

        with fetched(directory) as local:
            state = torch.load(local / "weights.pt", map_location="cpu", weights_only=True)
        return [ray.put(state)]

    def export(self, out_dir: str, *, stage: str, config: dict, metrics: dict, data_fingerprint: str,
               lineage: dict, weights: list | None = None) -> str | None:
        """Write the policy as a ``stage`` checkpoint (rank 0; every rank calls for ZeRO-3):
        the engine's weights, or ``weights`` (``[ref]`` of weights :meth:`publish_weights` put, no
        collective then). ``lineage``: parent, inputs and prompt manifest entries
        (:func:`rlhf_ray.stages.common.lineage`)."""
        state = self.engine.full_state_dict() if weights is None else None
        if self.rank != 0:
            return None
        if weights is not None:
            import ray

            state = ray.get(weights[0])
        from rlhf_ray.checkpoint import save_checkpoint
        from rlhf_ray.stages.common import load_lm_state
        from rlhf_ray.storage import staged

        ck = load_policy(self.sft_dir)  # a plain copy of the architecture (verified once per process)
        load_lm_state(ck.model, state)
        with staged(out_dir) as local:  # a storage URI: written here, published from this node
            save_checkpoint(local, stage=stage, model=ck.model, tokenizer=ck.tokenizer, vocab=ck.vocab,
                            catalog=ck.catalog, config=config, data_fingerprint=data_fingerprint,
                            metrics=metrics, state_dict=state, extra=lineage)
        return out_dir
