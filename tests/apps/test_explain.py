"""Explanations (vlm_jax.apps.explain): the attention capture of `layers.Attention`, the video towers' token
grids, the box scores on hand-made maps, and explain / save / score_split on two micro models: a
cross-attention pretraining run trained through the CLI, and an untrained dual-encoder QA model with a
single-frame video tower built in-process."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, data_dir_of, micro, run_vlm, train_args
from vlm_jax.errors import UserError

STEPS = 4

@pytest.fixture(scope="module")
def cross_attention_run(tiny_dataset, tmp_path_factory):
    """A micro pretraining run (ViViT joint, BERT, audio, cross-attention fusion, every loss) and a test clip."""
    from vlm_jax.apps import predictor as predictor_lib
    workdir = tmp_path_factory.mktemp("explain_pretrain")
    run_vlm(*train_args(tiny_dataset, workdir, f"train.num_steps={STEPS}", "optim.warmup_steps=1", "eval.splits=()"))
    predictor = predictor_lib.Predictor.load(workdir)
    clip = next(predictor_lib.referenced_clips(predictor.run, ["test:1"]).clips)
    return predictor, clip


@pytest.fixture(scope="module")
def dual_qa_run(tiny_dataset, tmp_path_factory):
    """An untrained QA model with a dual-encoder fusion and a single-frame video tower, and a test clip."""
    from vlm_jax import config as config_lib
    from vlm_jax.apps import predictor as predictor_lib
    from vlm_jax.run.build import Run
    data_dir = data_dir_of(tiny_dataset)
    config = config_lib.load(str(REPO / "configs/finetune_qa.py") + ":tiny", [
        f"data.data_dir={data_dir}", *micro("model.fusion.name=dual", "model.video.name=single_frame")])
    run = Run(config)
    predictor = predictor_lib.Predictor(run, run.factory.create(), 0, tmp_path_factory.mktemp("explain_qa"))
    clip = next(predictor_lib.referenced_clips(run, ["test:0"]).clips)
    return predictor, clip


# ---------------------------------------------------------------------- attention capture and token grids

@pytest.mark.parametrize("causal", [False, True])
def test_attention_capture_is_the_softmax_of_scaled_dot_products(causal):
    from vlm_jax.models.layers import Attention
    heads, width = 2, 8
    x = jax.random.normal(jax.random.key(0), (2, 5, width))
    context = None if causal else jax.random.normal(jax.random.key(1), (2, 7, width))
    keys = 5 if causal else 7
    valid = jnp.arange(keys)[None, :] < jnp.array([[keys], [3]])  # the second example sees 3 keys
    mask = valid[:, None, None, :]
    module = Attention(heads)
    variables = module.init(jax.random.key(2), x, context, mask, causal)
    assert set(variables) == {"params"}  # init does not store probabilities
    plain = module.apply(variables, x, context, mask, causal)
    captured, sown = module.apply(variables, x, context, mask, causal, mutable=["attention"])
    np.testing.assert_array_equal(plain, captured)

    params = nn.meta.unbox(variables["params"])
    project = lambda name, h: (h @ params[name]["kernel"] + params[name]["bias"]).reshape(h.shape[:2] + (heads, -1))
    q, k = project("query", x), project("key", x if context is None else context)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
    visible = np.broadcast_to(np.asarray(mask), logits.shape)
    if causal:
        visible = visible & np.tril(np.ones((5, keys), bool))
    logits = np.where(visible, logits, -np.inf)
    reference = np.exp(logits - logits.max(-1, keepdims=True))
    reference /= reference.sum(-1, keepdims=True)
    (weights,) = sown["attention"]["weights"]
    assert weights.shape == (2, heads, 5, keys)
    np.testing.assert_allclose(weights, reference, atol=1e-6)
    # the sown probabilities are the ones the output was computed with
    value = (np.asarray(context if context is not None else x) @ params["value"]["kernel"] + params["value"]["bias"])
    mixed = np.einsum("bhqk,bkhd->bqhd", reference, value.reshape(2, keys, heads, -1)).reshape(2, 5, width)
    np.testing.assert_allclose(mixed @ params["out"]["kernel"] + params["out"]["bias"], plain, atol=1e-5)


@pytest.mark.parametrize("name, fields, shape", [
    ("vivit", {"variant": "joint"}, (1, 8, 32, 32, 3)),
    ("vivit", {"variant": "factorised_encoder"}, (1, 8, 32, 32, 3)),
    ("vivit", {"variant": "factorised_self_attention"}, (1, 8, 32, 16, 3)),
    ("cnn2d", {}, (1, 6, 32, 32, 3)),
    ("cnn_rnn", {}, (1, 6, 32, 32, 3)),
    ("single_frame", {}, (1, 5, 32, 16, 3)),
    ("linear", {"tokens": "frame"}, (1, 6, 8, 8, 3)),
    ("linear", {"tokens": "clip"}, (1, 6, 8, 8, 3)),
    ("i3d", {}, (1, 20, 100, 72, 3)),  # "SAME" strides round up: 3 x 4 x 3 tokens
])
def test_token_grid_matches_the_encoders_token_count(name, fields, shape):
    from vlm_jax.models import vlm
    encoder = vlm.VIDEO_ENCODERS[name](**{**vlm._SIZE_TABLES["video"][name]["tiny"], **fields})
    tokens = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), jnp.zeros(shape))[0].tokens)
    grid = encoder.token_grid(shape)
    assert tokens.shape[1] == grid.size, grid
    if name == "single_frame":
        assert grid.frames == (2, 3) and (grid.height, grid.width) == (4, 2)
    if name == "i3d":
        assert tuple(grid[:3]) == (3, 4, 3)


def test_token_weights_land_on_their_tubelets_frames_and_quadrant():
    from vlm_jax.apps.explain import tokens_to_pixels
    from vlm_jax.models.layers import TokenGrid
    grid = TokenGrid(2, 4, 4)  # 4 frames, tubelets of 2 frames and 8 x 8 px
    weights = jnp.zeros((1, grid.size)).at[0, (1 * 4 + 0) * 4 + 3].set(1.0)  # time 1, row 0, column 3
    pixels = np.asarray(tokens_to_pixels(weights, grid, 4, 32, 32))[0]
    assert pixels[:2].max() == 0 and pixels[2:].max() > 0
    np.testing.assert_array_equal(pixels[2], pixels[3])
    row, column = np.unravel_index(np.argmax(pixels[2]), pixels[2].shape)
    assert row < 8 and column >= 24
    covered = np.asarray(tokens_to_pixels(jnp.ones((1, 4)), TokenGrid(1, 2, 2, frames=(1, 2)), 3, 8, 8))[0]
    assert covered[0].max() == covered[2].max() == 0 and np.allclose(covered[1], 1.0)


# ---------------------------------------------------------------------- scores against ground truth

def _boxes():
    """3 frames of 10 x 10 px: one box, two boxes, no object."""
    boxes = np.zeros((3, 3, 4), np.float32)
    boxes[0, 0] = (0.0, 0.0, 0.5, 0.5)  # rows 0-4, columns 0-4: 25 px
    boxes[1, 0] = (0.0, 0.0, 0.2, 1.0)  # rows 0-1, every column: 20 px
    boxes[1, 2] = (0.8, 0.8, 1.0, 1.0)  # rows 8-9, columns 8-9: 4 px
    return boxes


def test_pointing_game_and_energy_in_box_on_hand_made_maps():
    from vlm_jax.apps.explain import _frame_scores, energy_in_box, pointing_game
    boxes = _boxes()
    inside = np.zeros((3, 10, 10), np.float32)
    inside[0, 2, 3] = inside[1, 9, 9] = 1.0
    inside[2, 0, 0] = 1.0  # a frame without objects does not count
    assert pointing_game(inside, boxes) == 100.0 and energy_in_box(inside, boxes) == 100.0
    outside = np.zeros((3, 10, 10), np.float32)
    outside[0, 7, 7] = outside[1, 5, 5] = 1.0
    outside[2, 5, 5] = 1.0
    assert pointing_game(outside, boxes) == 0.0 and energy_in_box(outside, boxes) == 0.0
    half = inside + outside  # two equal peaks per frame, one inside: half a hit, half the mass
    assert pointing_game(half, boxes) == pytest.approx(50.0) and energy_in_box(half, boxes) == pytest.approx(50.0)
    uniform = np.ones((3, 10, 10), np.float32)
    area = 100 * (25 / 100 + 24 / 100) / 2
    assert energy_in_box(uniform, boxes) == pytest.approx(area)
    assert pointing_game(uniform, boxes) == pytest.approx(area)  # ties split: a flat map points at random
    assert 100 * _frame_scores(uniform, boxes)["area"][:2].mean() == pytest.approx(area)
    assert np.isnan(pointing_game(uniform, np.zeros_like(boxes)))


# ---------------------------------------------------------------------- explain on the micro models

def _check(explanation, clip, text):
    from vlm_jax.data import tokenizer
    frames = clip.video.shape[0]
    assert explanation.frames.shape == clip.video.shape and explanation.frames.dtype == np.uint8
    assert explanation.heatmap.shape == clip.video.shape[:3] and explanation.heatmap.dtype == np.float32
    assert explanation.heatmap.min() >= 0 and explanation.heatmap.max() == pytest.approx(1.0)
    assert explanation.frame_importance.shape == (frames,)
    assert explanation.frame_importance.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(explanation.frame_importance,
                               explanation.heatmap.sum((1, 2)) / explanation.heatmap.sum(), atol=1e-5)
    pieces = tokenizer._wordpiece().encode(text).tokens[1:-1]
    assert explanation.tokens == pieces[:len(explanation.tokens)] and len(explanation.tokens) >= 3
    assert explanation.token_scores.shape == (len(explanation.tokens),)
    assert np.isfinite(explanation.token_scores).all() and np.isfinite(explanation.score)


def test_explain_a_cross_attention_run_with_both_methods(cross_attention_run):
    from vlm_jax.apps import explain
    predictor, clip = cross_attention_run
    text = clip.metadata["captions"][0]
    attention = explain.explain(predictor, clip, text, "attention")
    gradient = explain.explain(predictor, clip, text, "gradient")
    assert (attention.method, gradient.method) == ("attention", "gradient")
    for explanation in (attention, gradient):
        _check(explanation, clip, text)
    # ViViT tubelets span 2 frames: attention is constant over each pair, the gradient is not
    np.testing.assert_array_equal(attention.heatmap[0], attention.heatmap[1])
    assert not np.array_equal(gradient.heatmap[0], gradient.heatmap[1])
    # both explain one score, so the word scores agree
    assert attention.score == gradient.score
    np.testing.assert_array_equal(attention.token_scores, gradient.token_scores)
    assert explain.explain(predictor, clip, text).method == "attention"  # pretraining trains the fusion


def test_gradient_saliency_is_grad_times_input_of_the_similarity(cross_attention_run):
    """An independent |d similarity / d pixels * pixels| summed over colours, through the model's own API."""
    from vlm_jax.apps import explain
    from vlm_jax.data import tokenizer
    predictor, clip = cross_attention_run
    ids, mask = tokenizer.encode([clip.metadata["captions"][0]], predictor.run.config.data.max_text_len)
    pixels = jnp.asarray(clip.video[None], jnp.float32) / 127.5 - 1.0

    def similarity(p):
        def score(vlm):
            video, sound = vlm.encode_video(p, jnp.asarray(clip.audio[None]))  # retrieval embeds the sound too
            video_emb, text_emb, scale = vlm.embed(video, vlm.encode_text(ids, mask), sound)
            return scale * jnp.sum(video_emb * text_emb)
        return predictor.run.model.apply(predictor.variables, method=score)

    expected = np.asarray(jnp.abs(jax.grad(similarity)(pixels) * pixels).sum(-1))
    saliency = explain.explainer_for(predictor).heatmaps(predictor.variables, clip.video[None], clip.audio[None],
                                                         ids, mask, "gradient")
    np.testing.assert_allclose(saliency, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_gradient_on_a_dual_encoder_sees_only_the_frames_the_model_sees(dual_qa_run):
    from vlm_jax.apps import explain
    predictor, clip = dual_qa_run
    question = "what colour is the shape?"
    explanation = explain.explain(predictor, clip, question)
    assert explanation.method == "gradient"
    _check(explanation, clip, question)
    middle = clip.video.shape[0] // 2  # the single-frame tower reads only this frame
    others = np.delete(explanation.heatmap, middle, axis=0)
    assert others.max() == 0 and explanation.heatmap[middle].max() == 1.0
    np.testing.assert_array_equal(explanation.frame_importance, np.eye(len(clip.video))[middle])


@pytest.mark.parametrize("overrides, method", [
    (("model.video.vivit.variant=joint",), "attention"),
    (("model.video.vivit.variant=factorised_encoder",), "gradient"),  # one token per time step: flat in space
    (("model.video.name=cnn_rnn",), "gradient"),
    (("model.fusion.name=concat_early",), "gradient"),  # no cross-attention
])
def test_auto_takes_attention_only_where_it_can_point_in_space(tiny_dataset, overrides, method):
    from vlm_jax import config as config_lib
    from vlm_jax.apps import explain
    from vlm_jax.run.build import Run
    config = config_lib.load(str(REPO / "configs/pretrain.py") + ":tiny", [
        f"data.data_dir={data_dir_of(tiny_dataset)}", *micro(*overrides)])
    assert explain.resolve_method(Run(config), "auto") == method


@pytest.mark.parametrize("method, text, message", [
    ("attention", "what colour is it?", "the attention method needs a fusion with cross-attention"),
    ("saliency", "what colour is it?", "unknown explanation method 'saliency'"),
    ("gradient", "   ", "the text is empty"),
])
def test_bad_requests_are_user_errors(dual_qa_run, method, text, message):
    from vlm_jax.apps import explain
    predictor, clip = dual_qa_run
    with pytest.raises(UserError, match=message):
        explain.explain(predictor, clip, text, method)


def test_save_writes_an_animated_gif_and_a_strip(cross_attention_run, tmp_path):
    from vlm_jax.apps import explain
    predictor, clip = cross_attention_run
    explanation = explain.explain(predictor, clip, clip.metadata["captions"][0])
    paths = explain.save(explanation, tmp_path / "out", "clip", size=96)
    gif = Image.open(paths["gif"])
    assert gif.n_frames == len(clip.video) and gif.size == (96, 96)
    strip = Image.open(paths["png"])
    assert strip.format == "PNG" and strip.size[0] > strip.size[1] > 2 * 96


def test_score_split_against_the_boxes(cross_attention_run):
    from vlm_jax.apps import explain
    predictor, _ = cross_attention_run
    scores = explain.score_split(predictor, "test", limit=12)
    assert set(scores) == {"pointing_game", "energy_in_box", "random_pointing_game", "random_energy_in_box",
                           "box_area"}
    assert all(0 <= value <= 100 for value in scores.values()), scores
    assert 3 < scores["box_area"] < 50  # one to three shapes of radius 0.085-0.135 (x growth) of the side
    assert scores["energy_in_box"] != scores["random_energy_in_box"]  # the trained and the random model differ
