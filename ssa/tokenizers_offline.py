"""Tokenizers built without a model hub.

CLIP (used by CLIP, CLIPSeg and OneFormer's task input): the real BPE vocabulary, taken from the
file that the `open_clip_torch` wheel ships (install it with `pip install --no-deps
open_clip_torch`; only the data file is read, open_clip is never imported).
BLIP: a BERT-style WordPiece vocabulary with BERT's special-token ids ([PAD] 0, [UNK] 100, [CLS] 101,
[SEP] 102, [MASK] 103) and BLIP's [DEC] / [ENC] at the end, filled with English words, so random
models produce readable captions. Real models use their own tokenizers instead.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from ssa.labels import class_names


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_bpe_file() -> Path:
    """Path of CLIP's `bpe_simple_vocab_16e6.txt.gz` inside the installed open_clip_torch wheel."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the CLIP BPE vocabulary comes from the open_clip_torch wheel: run `pip install --no-deps open_clip_torch`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the open_clip_torch installation")
    return path


def build_clip_tokenizer():
    """The real CLIP tokenizer (49,408 tokens), built from open_clip's BPE merges."""
    from transformers import CLIPTokenizer

    merges_text = gzip.open(clip_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges_text[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


@lru_cache(maxsize=1)
def _english_words() -> tuple[str, ...]:
    """Category words first (so small vocabularies still name things), then spaCy's lexicon."""
    from ssa.nouns import load_spacy

    words: dict[str, None] = {}
    for dataset in ("coco", "ade20k"):
        for name in class_names(dataset):
            for word in name.replace("-", " ").replace(",", " ").split():
                if word.isalpha():
                    words[word.lower()] = None
    for word in ("a", "an", "the", "of", "on", "in", "with", "and", "next", "to", "at", "by", "is", "near"):
        words[word] = None
    lexicon = sorted(s for s in load_spacy().vocab.strings if s.isascii() and s.isalpha() and s.islower() and 1 < len(s) < 12)
    for word in lexicon:
        words[word] = None
    return tuple(words)


def build_blip_tokenizer(vocab_size: int):
    """A BERT WordPiece tokenizer of exactly `vocab_size` tokens laid out like BLIP's.

    Ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103 as in BERT; letters, word pieces and
    English words fill the rest (where BERT has [unused*] too, so random models emit words); the
    last two ids are [DEC] (BLIP's decoder start, bos) and [ENC].
    """
    from transformers import BertTokenizer

    if vocab_size < 200:
        raise ValueError(f"BLIP vocabulary needs at least 200 tokens, got {vocab_size}")
    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    letters = list("abcdefghijklmnopqrstuvwxyz")
    fill = iter(letters + ["##" + c for c in letters] + [w for w in _english_words() if w not in letters])
    tokens = [specials.get(i) or next(fill) for i in range(vocab_size - 2)]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    if len(tok) != vocab_size:
        raise RuntimeError(f"built a BLIP vocabulary of {len(tok)} tokens, wanted {vocab_size}")
    return tok
