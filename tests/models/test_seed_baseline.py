"""The minimal reference VLM: linear towers against hand-written references, addition's symmetry, and
`configs/seed_baseline.py` training end to end through the CLI (pretraining, then caption finetuning)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_vlm, train_args, train_losses
from vlm_jax.models.fusion import AddFusion
from vlm_jax.models.layers import Encoded
from vlm_jax.models.text.bow import BagOfWords
from vlm_jax.models.video.linear import LinearVideo

VIDEO = jax.random.uniform(jax.random.key(0), (2, 4, 8, 8, 3), minval=-1, maxval=1)


def test_linear_video_projects_flattened_frames():
    per_frame = LinearVideo(width=16)
    params = nn.meta.unbox(per_frame.init(jax.random.key(1), VIDEO))["params"]
    kernel, bias = params["projection"]["kernel"], params["projection"]["bias"]
    flat = np.asarray(VIDEO).reshape(2, 4, -1)
    frames = per_frame.apply({"params": params}, VIDEO)
    assert frames.tokens.shape == (2, 4, 16) and frames.pooled.shape == (2, 16) and frames.mask is None
    np.testing.assert_allclose(frames.tokens, flat @ kernel + bias, atol=1e-5)
    np.testing.assert_allclose(frames.pooled, flat.mean(axis=1) @ kernel + bias, atol=1e-5)
    # one token for the time-averaged clip: the same pooled vector, since the map is linear
    clip = LinearVideo(width=16, tokens="clip").apply({"params": params}, VIDEO)
    assert clip.tokens.shape == (2, 1, 16)
    np.testing.assert_allclose(clip.pooled, frames.pooled, atol=1e-5)
    # no positions: reversing time changes nothing pooled
    reversed_pooled = per_frame.apply({"params": params}, VIDEO[:, ::-1]).pooled
    np.testing.assert_allclose(reversed_pooled, frames.pooled, atol=1e-5)
    with pytest.raises(ValueError, match="unknown tokens 'pixel'"):
        LinearVideo(tokens="pixel").init(jax.random.key(1), VIDEO)


def test_linear_text_is_mean_pooled_embeddings_through_one_dense():
    ids = jnp.array([[5, 9, 3, 0], [7, 7, 0, 0]])
    mask = ids > 0
    model = BagOfWords(vocab_size=12, width=6, out_dim=10, pool="mean")
    params = nn.meta.unbox(model.init(jax.random.key(2), ids, mask))["params"]
    out = model.apply({"params": params}, ids, mask)
    table = np.asarray(params["word_embeddings"]["embedding"])
    kernel, bias = params["projection"]["kernel"], params["projection"]["bias"]
    for row in range(2):
        real = np.asarray(ids[row])[np.asarray(mask[row])]
        np.testing.assert_allclose(out.pooled[row], table[real].mean(axis=0) @ kernel + bias, atol=1e-5)
    assert out.tokens.shape == (2, 4, 10)


def test_add_fusion_is_commutative_in_its_two_inputs():
    """Feeding the text tower to the video slot and the video tower to the text slot (each slot's projection
    going with its tower) gives the same fused vector."""
    keys = jax.random.split(jax.random.key(3), 4)
    video = Encoded(jax.random.normal(keys[0], (2, 3, 12)), jax.random.normal(keys[1], (2, 12)))
    text = Encoded(jax.random.normal(keys[2], (2, 5, 20)), jax.random.normal(keys[3], (2, 20)))
    fusion = AddFusion(width=16)
    params = nn.meta.unbox(fusion.init(jax.random.key(4), video, text))["params"]
    out = fusion.apply({"params": params}, video, text)
    swapped = {"video_projection": params["text_projection"], "text_projection": params["video_projection"]}
    out_swapped = fusion.apply({"params": swapped}, text, video)
    np.testing.assert_allclose(out_swapped.pooled, out.pooled, atol=1e-5)
    project = lambda x, p: x @ p["kernel"] + p["bias"]
    np.testing.assert_allclose(out.pooled, project(video.pooled, params["video_projection"])
                               + project(text.pooled, params["text_projection"]), atol=1e-5)
    assert out.tokens.shape == (2, 5, 16)


def test_seed_baseline_trains_and_captions(tiny_dataset, tmp_path):
    """`configs/seed_baseline.py:tiny` pretrains with every pretraining loss (its loss falls), then finetunes
    its linear caption decoder and writes beam-search caption metrics."""
    pretrain = tmp_path / "pretrain"
    run_vlm(*train_args(tiny_dataset, pretrain, "train.num_steps=40", "optim.warmup_steps=2",
                        config="configs/seed_baseline.py:tiny"))
    losses = train_losses(pretrain)
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert last < first - 0.5, (first, last)
    caption = tmp_path / "caption"
    run_vlm(*train_args(tiny_dataset, caption, "train.num_steps=4", "optim.warmup_steps=1",
                        f"init_from.workdir={pretrain}",
                        "eval.caption.beam_size=2", "eval.caption.max_len=8",
                        config="configs/seed_baseline.py:tiny,caption"))
    results = (caption / "results.json").read_text()
    assert '"test/caption/CIDEr"' in results and '"test/caption/BLEU-4"' in results
