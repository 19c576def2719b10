"""Fixed decoding cases: a seeded tiny GPT-2, prompts of many lengths, every strategy.

``python tests/decode_cases.py --record`` writes what the current
:func:`rlhf_ray.generation.generate_pages` produces for them to
``tests/data/decode_reference.json``. The file in the repository was recorded with the
decoder before the KV-cache rewrite (generation.py of main at e17bd1a: one HF forward per slot over a
DynamicCache); ``tests/test_decode_reference.py`` checks the current decoder against it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REFERENCE = Path(__file__).parent / "data" / "decode_reference.json"
N_ITEMS = 40
# lengths 0..36 so that rows fall in several length buckets; one row has only 3 allowed items
HISTORIES = [[1, 2, 3], [], [5, 6, 7, 8, 9, 10, 11, 12], list(range(0, 36)), [39, 38], list(range(3, 33)),
             [7], list(range(10, 40, 2)), [0, 20], list(range(1, 37)), [4, 8, 15, 16, 23, 30], list(range(25, 39))]
EXCLUDE = [[], [0, 1, 2], [], [36], [], [], [9, 10], [], [], [37, 38], [], []]
CANDIDATES = [None, None, list(range(5, 25)), None, None, None, None, None, [20, 21, 22, 23], None, None, None]
CASES = {  # name -> GenerationConfig fields and a generator seed (None: no generator)
    "greedy": ({"page_size": 8, "strategy": "greedy"}, None),
    "sample": ({"page_size": 8, "strategy": "sample"}, 1),
    "sample_t07_top5": ({"page_size": 8, "strategy": "sample", "temperature": 0.7, "top_k": 5}, 2),
    "sample_t3": ({"page_size": 5, "strategy": "sample", "temperature": 3.0}, 3),
    "beam3": ({"page_size": 6, "strategy": "beam", "num_beams": 3}, None),
    "beam1": ({"page_size": 6, "strategy": "beam", "num_beams": 1}, None),
}


def tiny_lm():
    """A 2-layer GPT-2 with weights drawn wide enough that item logits are far from ties."""
    from rlhf_ray.config import ModelConfig
    from rlhf_ray.model import build_model
    from rlhf_ray.tokens import train_tokenizer

    _, vocab = train_tokenizer(["Toy Story | Animation, Comedy", "Heat | Action, Crime"] * 20,
                               n_items=N_ITEMS, vocab_size=300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=96, dropout=0.0,
                                    text_vocab_size=300), vocab)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), vocab


def prompts(vocab):
    from rlhf_ray.generation import build_prompts

    return build_prompts(HISTORIES, vocab, max_history=50, exclude=EXCLUDE, candidates=CANDIDATES)


def run_case(model, vocab, name: str):
    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.generation import generate_pages

    fields, seed = CASES[name]
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return generate_pages(model, vocab, prompts(vocab), GenerationConfig(**fields), generator=gen)


def record() -> None:
    model, vocab = tiny_lm()
    out = {}
    for name in CASES:
        pages = run_case(model, vocab, name)
        out[name] = {"items": pages.items.tolist(), "logprobs": pages.logprobs.tolist()}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(out, indent=None) + "\n")
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    record()
