"""The composed model: every video encoder x fusion (and both text towers, audio on and off) builds and runs
forward and backward; a covering set also executes for real."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm_jax.models import fusion, vlm

NUM_ANSWERS = 29
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1), "masking": jax.random.key(2)}


def make_model(video: str, text: str = "bert", audio: str | None = "audio_transformer",
               fusion_name: str = "cross_attention", caption: str = "transformer",
               retrieval_audio: bool | None = None) -> vlm.VLM:
    config = vlm.model_config("tiny")
    config.video.name, config.text.name, config.audio.name, config.fusion.name = video, text, audio, fusion_name
    config.caption.name, config.retrieval_audio = caption, retrieval_audio
    return vlm.VLM(ml_collections.FrozenConfigDict(config), num_answers=NUM_ANSWERS)


def make_batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    caption_mask = np.ones((2, 12), np.int32)
    caption_mask[1, 7:] = 0
    return {
        "video": jnp.asarray(rng.integers(0, 256, (2, 8, 32, 32, 3)), jnp.uint8),
        "audio_wave": jnp.asarray(rng.uniform(-0.5, 0.5, (2, 8000)), jnp.float32),
        "caption": jnp.asarray(rng.integers(1000, 2000, (2, 12)) * caption_mask, jnp.int32),
        "caption_mask": jnp.asarray(caption_mask),
        "question": jnp.asarray(rng.integers(1000, 2000, (2, 10)), jnp.int32),
        "question_mask": jnp.ones((2, 10), jnp.int32),
    }


def loss_fn(model, batch):
    def loss(params, rest):
        out, _ = model.apply({**rest, "params": params}, **batch, train=True, mutable=["batch_stats"],
                             rngs={"dropout": RNGS["dropout"], "masking": RNGS["masking"]})
        return sum(jnp.sum(value.astype(jnp.float32)) for value in jax.tree.leaves(out)), out
    return loss


EXPECTED = {"video_embedding": (2, 64), "text_embedding": (2, 64), "logit_scale": (), "match": (2,),
            "mlm": (2, 12, 30522), "answer": (2, NUM_ANSWERS), "caption": (2, 12, 30522), "mvm": (2, 8, 1536)}

# Every video encoder and every fusion at least once (the full product is the slow test below).
COMBINATIONS = ([(video, "bert", "audio_transformer", name) for video, name in zip(vlm.VIDEO_ENCODERS, fusion.FUSIONS)]
                + [("vivit", "bow", "audio_transformer", "cross_attention"), ("vivit", "bert", None, "cross_attention")])
EVERY_COMBINATION = list(itertools.product(vlm.VIDEO_ENCODERS, vlm.TEXT_ENCODERS, ["audio_transformer", None],
                                           fusion.FUSIONS))


def check_builds_forward_and_backward(video, text, audio, fusion_name, caption="transformer"):
    """Trace init, forward and gradient abstractly: shapes must compose (no XLA compile needed)."""
    model, batch = make_model(video, text, audio, fusion_name, caption), make_batch()
    variables = jax.eval_shape(lambda: model.init(RNGS, **batch))
    rest = {k: v for k, v in variables.items() if k != "params"}
    grads, out = jax.eval_shape(jax.grad(loss_fn(model, batch), has_aux=True), variables["params"], rest)
    assert {k: v.shape for k, v in out.items()} == EXPECTED
    assert jax.tree.structure(nn.meta.unbox(grads)) == jax.tree.structure(nn.meta.unbox(variables["params"]))
    assert ("batch_stats" in variables) == (video == "i3d")
    modules = {"video_encoder", "text_encoder", "fusion", "contrastive", "matching", "mlm_head", "mvm_head",
               "caption_decoder", "qa_head"} | ({"audio_encoder"} if audio else set())
    assert set(variables["params"]) == modules


@pytest.mark.parametrize("video, text, audio, fusion_name", COMBINATIONS, ids=lambda v: str(v))
def test_combination_builds_forward_and_backward(video, text, audio, fusion_name):
    check_builds_forward_and_backward(video, text, audio, fusion_name)


def test_seed_baseline_builds_forward_and_backward():
    """The minimal reference VLM (configs/seed_baseline.py): linear towers, addition, the linear decoder."""
    check_builds_forward_and_backward("linear", "linear", None, "add", caption="linear")


@pytest.mark.slow
@pytest.mark.parametrize("video, text, audio, fusion_name", EVERY_COMBINATION, ids=lambda v: str(v))
def test_every_combination_builds_forward_and_backward(video, text, audio, fusion_name):
    check_builds_forward_and_backward(video, text, audio, fusion_name)


# Executed for real: together they cover every fusion, both text towers and audio on and off. (I3D, the
# slowest to compile, runs for real in its own tests, batch statistics included.)
# The default suite runs the first two; the others are marked slow (each fusion also runs in test_fusion.py).
EXECUTED = [("vivit", "bert", "audio_transformer", "cross_attention"), ("cnn2d", "bow", None, "concat_late"),
            *(pytest.param(*combination, marks=pytest.mark.slow) for combination in [
                ("cnn2d", "bert", "audio_transformer", "co_attention"),
                ("cnn_rnn", "bow", "audio_transformer", "concat_early"), ("single_frame", "bert", None, "dual")])]


@pytest.mark.parametrize("video, text, audio, fusion_name", EXECUTED, ids=lambda v: str(v))
def test_runs_forward_and_backward(video, text, audio, fusion_name):
    model, batch = make_model(video, text, audio, fusion_name), make_batch()
    variables = jax.jit(lambda: model.init(RNGS, **batch))()
    rest = {k: v for k, v in variables.items() if k != "params"}
    (total, out), grads = jax.jit(jax.value_and_grad(loss_fn(model, batch), has_aux=True))(variables["params"], rest)
    assert np.isfinite(float(total)) and {k: v.shape for k, v in out.items()} == EXPECTED
    norms = {jax.tree_util.keystr(path): float(jnp.abs(g).max())
             for path, g in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(grads))[0]}
    assert all(np.isfinite(v) for v in norms.values())
    for tower in ("video_encoder", "text_encoder", "fusion", "qa_head", "caption_decoder", "mvm_head"):
        assert any(v > 0 for k, v in norms.items() if f"'{tower}'" in k), tower
    if audio:
        assert any(v > 0 for k, v in norms.items() if "'audio_encoder'" in k)
    assert np.allclose(np.linalg.norm(out["video_embedding"], axis=-1), 1.0, atol=1e-5)


def test_retrieval_embeddings_do_not_depend_on_the_other_modality():
    """Dual-encoder embeddings: the video embedding is a function of the video alone, and vice versa."""
    model, batch = make_model("cnn2d", "bow", None, "dual"), make_batch()
    variables = jax.jit(lambda: model.init(RNGS, **batch))()
    encode = jax.jit(lambda b: model.apply(variables, **b))
    other = make_batch(seed=1)
    swapped_text = {**batch, "caption": other["caption"], "caption_mask": other["caption_mask"]}
    np.testing.assert_array_equal(encode(batch)["video_embedding"], encode(swapped_text)["video_embedding"])
    assert not np.allclose(encode(batch)["text_embedding"], encode(swapped_text)["text_embedding"])


@pytest.mark.parametrize("retrieval_audio", [None, False])
def test_the_retrieval_embedding_hears_the_audio_unless_turned_off(retrieval_audio):
    """Two clips with the same frames and different sounds: one retrieval embedding each when retrieval reads
    the audio (the default with an audio tower), the same one when `model.retrieval_audio=False`, whose
    contrastive head is then the video-only head, parameter for parameter."""
    model = make_model("cnn2d", "bow", "audio_transformer", "dual", retrieval_audio=retrieval_audio)
    batch = make_batch()
    batch["video"] = jnp.broadcast_to(batch["video"][:1], batch["video"].shape)
    assert not np.allclose(batch["audio_wave"][0], batch["audio_wave"][1])
    variables = nn.meta.unbox(jax.jit(lambda: model.init(RNGS, **batch))())
    head = set(variables["params"]["contrastive"])
    if retrieval_audio is None:  # as trained: the audio projection starts at zero (the video-only embedding)
        projection = variables["params"]["contrastive"]["audio_projection"]
        projection["kernel"] = jax.random.normal(jax.random.key(3), projection["kernel"].shape)
    video_emb = jax.jit(lambda b: model.apply(variables, **b)["video_embedding"])(batch)
    if retrieval_audio is None:
        assert not np.allclose(video_emb[0], video_emb[1], atol=1e-3)
        assert head == {"video_projection", "audio_projection", "text_projection", "log_scale"}
    else:
        np.testing.assert_array_equal(video_emb[0], video_emb[1])
        silent = make_model("cnn2d", "bow", None, "dual")
        assert jax.tree.structure(variables["params"]["contrastive"]) == jax.tree.structure(
            nn.meta.unbox(jax.eval_shape(lambda: silent.init(RNGS, **batch)))["params"]["contrastive"])
