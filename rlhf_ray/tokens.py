"""Item/user tokens and the meta-text tokenizer.

One vocabulary holds three ranges, in this order:

    [0, n_text)                          text tokens for titles/categories + specials
    [item_offset, item_offset + n_items) one token per catalogue item: ``<item_{idx}>``
    [user_offset, user_offset + n_users) optional: one token per user: ``<user_{idx}>``

Items are contiguous so "all item logits" is one slice and token id -> item_idx is
a subtraction. The text part is either a byte-level BPE trained offline with
``tokenizers`` on the catalogue's own text (:func:`train_tokenizer`; nothing is
downloaded), or a pretrained model's own tokenizer with the specials it lacks
appended (:func:`extend_tokenizer`), so the pretrained ids keep their meaning.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rlhf_ray.config.base import ConfigError
from rlhf_ray.errors import CheckpointError

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<hist>", "<page>", "<sep>", "<meta>"]
VOCAB_FILE = "rlhf_ray_vocab.json"


@dataclass(frozen=True)
class Vocab:
    """Token-id layout shared by every stage, generation and serving."""

    n_text: int  # text tokens (trained BPE, or a base model's own) + specials
    item_offset: int
    n_items: int
    user_offset: int
    n_users: int  # 0 when users have no tokens
    pad: int
    bos: int
    eos: int
    hist: int
    page: int
    sep: int
    meta: int

    @property
    def size(self) -> int:
        return self.user_offset + self.n_users

    def item_token(self, item_idx):
        """item_idx (int or array/tensor) -> token id."""
        return item_idx + self.item_offset

    def token_item(self, token_id):
        """token id (int or array/tensor) -> item_idx (caller ensures it is an item token)."""
        return token_id - self.item_offset

    def user_token(self, user_idx):
        if self.n_users == 0:
            raise ValueError("this vocabulary has no user tokens (built with user_tokens=False)")
        return user_idx + self.user_offset

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(**d)


def train_tokenizer(texts: Iterable[str], n_items: int, n_users: int = 0, vocab_size: int = 1000):
    """Train a byte-level BPE on ``texts`` and append item (and user) tokens.

    Returns ``(PreTrainedTokenizerFast, Vocab)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    n_text = tok.get_vocab_size()
    # wrapped first, the item/user tokens added after: transformers deep-copies the added-token table
    # it finds at construction (about 40 s at 1M items); added to the wrapper, the same tokens (same
    # ids, byte-identical files) cost a few seconds (bench/tokenizer_build.py)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    hf.add_tokens([f"<item_{i}>" for i in range(n_items)] + [f"<user_{u}>" for u in range(n_users)],
                  special_tokens=True)
    vocab = _layout(hf, n_text, n_items, n_users)
    return hf, vocab


# Files a tokenizer directory has at least one of (fast: tokenizer.json; slow BPE / WordPiece /
# SentencePiece sources transformers converts from).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def extend_tokenizer(base: str | Path, n_items: int, n_users: int = 0):
    """A pretrained model's own tokenizer (``AutoTokenizer.from_pretrained(base)``, ``base`` a local
    directory) with what
    this project needs appended: the :data:`SPECIALS` it lacks (matched by string; one it
    already has keeps its id), then ``<item_0..n_items-1>``, then ``<user_0..n_users-1>``.

    Every id the base tokenizer had keeps its string, so the base model's embedding rows keep
    their meaning; ``n_text`` = base size + added specials, and the item (user) tokens follow
    contiguously as :class:`Vocab` requires. Returns ``(tokenizer, Vocab, n_base)``, where
    ``n_base`` is the base tokenizer's size (ids from it on are new and need fresh embedding
    rows). A :class:`ConfigError` naming ``model.base_model`` when it is not a directory or has
    no tokenizer, the tokenizer has no fast backend (a checkpoint stores ``tokenizer.json``), its
    ids have holes, or it already has tokens named like the item/user tokens (the appended
    ones would then not be contiguous).
    """
    from transformers import AutoTokenizer

    where = f"model.base_model {base}"
    d = Path(base)
    if not d.is_dir():  # a hub name would mean a download: fetch it to a directory first, on purpose
        raise ConfigError(f"{where}: not a directory; save (or download) the model and its tokenizer to a "
                          f"directory and pass that")
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{where}: no tokenizer in the directory (none of {', '.join(TOKENIZER_FILES)}); "
                          f"save the base model's tokenizer there too (tokenizer.save_pretrained(DIR))")
    try:
        hf = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot load its tokenizer: {e}") from None
    if not getattr(hf, "is_fast", False):
        raise ConfigError(f"{where}: its tokenizer ({type(hf).__name__}) has no fast (tokenizers) backend; "
                          f"checkpoints store tokenizer.json, so a fast tokenizer is needed")
    base_vocab = hf.get_vocab()
    n_base = len(hf)
    if len(base_vocab) != n_base or (base_vocab and max(base_vocab.values()) != n_base - 1):
        raise ConfigError(f"{where}: its tokenizer's ids are not 0..{n_base - 1} ({len(base_vocab)} tokens, "
                          f"largest id {max(base_vocab.values(), default=-1)}): tokens appended to it would not "
                          f"get contiguous ids")
    new = [f"<item_{i}>" for i in range(n_items)] + [f"<user_{u}>" for u in range(n_users)]
    clash = [t for t in new if t in base_vocab]
    if clash:
        raise ConfigError(f"{where}: its tokenizer already has {len(clash)} token(s) named like the item/user "
                          f"tokens (e.g. {clash[:3]}); the item tokens would not get contiguous ids")
    hf.add_tokens([s for s in SPECIALS if s not in base_vocab], special_tokens=True)
    n_text = len(hf)
    hf.add_tokens(new, special_tokens=True)
    if hf.pad_token is None:
        hf.pad_token = "<pad>"
    got = hf.convert_tokens_to_ids(new)
    bad = [(t, i) for k, (t, i) in enumerate(zip(new, got)) if i != n_text + k]
    if bad or len(hf) != n_text + len(new):
        raise ConfigError(f"{where}: appending the item/user tokens gave non-contiguous ids "
                          f"(e.g. {bad[:3]}; expected {n_text}..{n_text + len(new) - 1})")
    return hf, _layout(hf, n_text, n_items, n_users), n_base


def _layout(hf, n_text: int, n_items: int, n_users: int) -> Vocab:
    ids = {s: hf.convert_tokens_to_ids(s) for s in SPECIALS}
    item_offset = n_text
    user_offset = n_text + n_items
    # The whole design relies on contiguous item ids: verify rather than assume.
    for probe in {0, n_items // 2, n_items - 1} if n_items else set():
        got = hf.convert_tokens_to_ids(f"<item_{probe}>")
        if got != item_offset + probe:
            raise RuntimeError(f"item token <item_{probe}> got id {got}, expected {item_offset + probe}")
    return Vocab(
        n_text=n_text, item_offset=item_offset, n_items=n_items, user_offset=user_offset, n_users=n_users,
        pad=ids["<pad>"], bos=ids["<bos>"], eos=ids["<eos>"], hist=ids["<hist>"], page=ids["<page>"],
        sep=ids["<sep>"], meta=ids["<meta>"],
    )


class SavedTokenizer:
    """A tokenizer directory written by :func:`save_tokenizer`, loaded on first use.

    Ranking, decoding pages, PPO's roles and serving only need the :class:`Vocab` layout
    (item ids are offsets); the Hugging Face tokenizer is needed to read text (pre-training)
    or to print token strings. Building it costs time linear in the added tokens, about 40 s
    at 1M items (transformers copies the added-token table at construction), so a loaded
    checkpoint holds this stand-in: any attribute, a call or :meth:`load` builds the real
    ``PreTrainedTokenizerFast`` once; ``len()`` is known from the layout. Saving one never
    loaded copies its directory (:func:`save_tokenizer`).
    """

    def __init__(self, directory: str | Path, size: int):
        self.directory = Path(directory)
        self.size = size
        self._hf = None

    @property
    def loaded(self) -> bool:
        return self._hf is not None

    def load(self):
        """The ``PreTrainedTokenizerFast`` (built on the first call)."""
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            hf = PreTrainedTokenizerFast.from_pretrained(str(self.directory))
            if len(hf) != self.size:
                raise CheckpointError(f"{self.directory}: tokenizer has {len(hf)} tokens but the layout says "
                                      f"{self.size}")
            self._hf = hf
        return self._hf

    def __getattr__(self, name: str):  # only for names this class lacks: the tokenizer's own
        if name.startswith("__") or name == "_hf":  # pickling and copying probe these before __init__ ran
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __call__(self, *args, **kwargs):
        return self.load()(*args, **kwargs)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SavedTokenizer({str(self.directory)!r}, size={self.size}, loaded={self.loaded})"


def save_tokenizer(hf, vocab: Vocab, directory: str | Path) -> None:
    """Write the tokenizer and its layout to ``directory``: a :class:`SavedTokenizer` never loaded is
    copied file by file (nothing to build), any other through ``save_pretrained``."""
    import shutil

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(hf, SavedTokenizer) and not hf.loaded:
        for f in sorted(hf.directory.iterdir()):
            if f.is_file() and f.name != VOCAB_FILE:
                shutil.copyfile(f, d / f.name)
    else:
        hf.save_pretrained(str(d))  # a SavedTokenizer builds itself here
    (d / VOCAB_FILE).write_text(json.dumps(vocab.to_dict(), indent=2))


def load_tokenizer(directory: str | Path) -> tuple[SavedTokenizer, Vocab]:
    """``(SavedTokenizer, Vocab)`` of a directory :func:`save_tokenizer` wrote; the tokenizer itself
    is built on first use (:class:`SavedTokenizer`)."""
    d = Path(directory)
    if not (d / VOCAB_FILE).is_file() or not (d / "tokenizer.json").is_file():
        raise CheckpointError(f"{d}: not a rlhf-ray tokenizer directory (needs tokenizer.json and {VOCAB_FILE})")
    try:
        vocab = Vocab.from_dict(json.loads((d / VOCAB_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{d / VOCAB_FILE}: not a token layout ({e})") from None
    return SavedTokenizer(d, vocab.size), vocab


def meta_texts(titles: Sequence[str], categories: Sequence[Sequence[str]]) -> list[str]:
    """The catalogue text the BPE is trained on and pre-training reads: 'title | cat, cat'."""
    return [f"{t} | {', '.join(c)}" for t, c in zip(titles, categories)]
