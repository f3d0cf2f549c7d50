"""ViViT variants and the single-frame baseline at the tiny size on [2, 8, 32, 32, 3] clips."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.models.video import single_frame, vivit
from vlm_jax.models.video.single_frame import SingleFrame
from vlm_jax.models.video.vivit import ViViT

VIDEO_SHAPE = (2, 8, 32, 32, 3)
GRID = (4, 4, 4)  # tubelets (2, 8, 8) along time, height, width
NUM_TUBELETS, SPOTS = 64, 16
VARIANTS_POOLS = [(variant, pool) for variant in vivit.VARIANTS for pool in vivit.POOLS]
# Compile time dominates this file; XLA's backend optimisation level 0 roughly halves it on CPU.
BF16_TOLERANCE = 0.1  # measured max |bf16 - f32| <= 0.05 on pooled and tokens (LayerNorm outputs, |x| up to 4)


def video(seed: int = 0, shape=VIDEO_SHAPE) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def tiny(variant: str = "joint", pool: str = "cls", **overrides) -> ViViT:
    return ViViT(variant=variant, pool=pool, **{**vivit.SIZES["tiny"], **overrides})


@functools.lru_cache(maxsize=None)
def init(model: nn.Module):
    """Boxed variables of `model` for VIDEO_SHAPE, drawn with numpy at LeCun-like scales: compiling
    `model.init` for every configuration would dominate this file's run time (the real initialisers run
    once, in test_real_init_matches_hugging_face_layout)."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 400
        values = rng.normal(0.0, fan_in ** -0.5, leaf.shape)
        return jnp.asarray(values + ("['scale']" in jax.tree_util.keystr(path)), leaf.dtype)

    abstract = jax.eval_shape(model.init, jax.random.key(1), video())
    return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.lru_cache(maxsize=None)
def forward(model: nn.Module):
    """One compiled apply per configuration, shared across tests."""
    return jax.jit(model.apply)


def assert_gradients_flow(model: nn.Module, variables, expected_tokens: int) -> None:
    """One jitted forward + backward: output shapes, then a finite, non-zero gradient for every leaf."""
    params = nn.meta.unbox(variables)["params"]
    weights_pooled = jax.random.normal(jax.random.key(7), (VIDEO_SHAPE[0], model.width))
    weights_tokens = jax.random.normal(jax.random.key(8), (VIDEO_SHAPE[0], expected_tokens, model.width))

    def loss(params):  # random projections: a plain sum would cancel through the final LayerNorm
        out = model.apply({"params": params}, video())
        return jnp.sum(out.pooled * weights_pooled) + jnp.sum(out.tokens * weights_tokens), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert out.tokens.shape == (VIDEO_SHAPE[0], expected_tokens, model.width)
    assert out.pooled.shape == (VIDEO_SHAPE[0], model.width)
    assert out.mask is None
    assert_gradients_finite_and_nonzero(grads)


@pytest.mark.parametrize("variant,pool", VARIANTS_POOLS)
def test_forward_gradients_and_logical_axes(variant, pool):
    model = tiny(variant, pool)
    variables = init(model)
    assert_all_leaves_named(variables)
    assert_gradients_flow(model, variables, GRID[0] if variant == "factorised_encoder" else NUM_TUBELETS)


def test_real_init_matches_hugging_face_layout():
    variables = jax.jit(tiny().init)(jax.random.key(1), video())
    assert_all_leaves_named(variables)
    params = nn.meta.unbox(variables)["params"]
    assert params["position_embedding"].shape == (1 + NUM_TUBELETS, 64)
    assert params["cls_token"].shape == (64,)
    assert params["tubelet_embedding"]["kernel"].shape == (2, 8, 8, 3, 64)  # torch Conv3d [out, in, t, h, w]
    assert set(params["transformer"]["layer_0"]) == {"norm_attention", "attention", "norm_mlp", "mlp"}
    assert set(params["transformer"]["layer_0"]["attention"]) == {"query", "key", "value", "out"}
    assert set(params) == {"cls_token", "position_embedding", "tubelet_embedding", "transformer", "norm"}


def test_tubelet_embedding_equals_strided_conv():
    """The matmul stem is exactly a Conv3D with kernel = stride = tubelet on the same kernel."""
    model = tiny()
    params = nn.meta.unbox(init(model))["params"]["tubelet_embedding"]
    ours = vivit.TubeletEmbedding(64, (2, 8, 8)).apply({"params": params}, video())
    conv = nn.Conv(64, (2, 8, 8), strides=(2, 8, 8), padding="VALID").apply({"params": params}, video())
    np.testing.assert_allclose(ours, conv.reshape(ours.shape), atol=1e-5)


def test_vmap_over_batches_sharing_parameters():
    model = tiny("factorised_self_attention")
    variables = nn.meta.unbox(init(model))
    clips = jnp.stack([video(3), video(4)])
    stacked = jax.jit(jax.vmap(lambda clip: model.apply(variables, clip).pooled))(clips)
    for clip, pooled in zip(clips, stacked):
        np.testing.assert_allclose(pooled, forward(model)(variables, clip).pooled, atol=1e-5)


@functools.lru_cache(maxsize=None)
def masked_forward(model: nn.Module, train: bool):
    return jax.jit(lambda variables, clip, rng: model.apply(variables, clip, train=train, rngs={"masking": rng},
                                                        mutable=["intermediates"]))


def masked_apply(model, variables, clip, seed, train=True):
    return masked_forward(model, train)(variables, clip, jax.random.key(seed))


@pytest.mark.parametrize("variant", vivit.VARIANTS)
def test_token_masking(variant):
    model = tiny(variant, mask_ratio=0.75)
    variables = nn.meta.unbox(init(tiny(variant)))  # masking adds no parameters
    out, state = masked_apply(model, variables, video(), 0)
    kept = np.asarray(state["intermediates"]["kept_tubelets"][0])
    kept_per_slice = round(0.25 * SPOTS)
    expected = round(0.25 * NUM_TUBELETS) if variant == "joint" else GRID[0] * kept_per_slice
    assert kept.shape == (VIDEO_SHAPE[0], expected)
    assert np.all(np.diff(kept, axis=1) > 0) and kept.min() >= 0 and kept.max() < NUM_TUBELETS
    assert out.tokens.shape == (VIDEO_SHAPE[0], GRID[0] if variant == "factorised_encoder" else expected, 64)
    assert not np.array_equal(kept[0], kept[1]), "every example draws its own kept set"
    _, other = masked_apply(model, variables, video(), 1)
    assert not np.array_equal(kept, other["intermediates"]["kept_tubelets"][0]), "the rng decides the kept set"
    if variant != "joint":
        per_slice = kept.reshape(VIDEO_SHAPE[0], GRID[0], kept_per_slice)
        assert np.all(per_slice // SPOTS == np.arange(GRID[0])[None, :, None]), "same count in every slice"
        same_spots = np.all(per_slice % SPOTS == per_slice[:, :1] % SPOTS)
        assert same_spots == (variant == "factorised_self_attention"), "tube masking only for factorised attention"


def unpatchify(patches: jax.Array) -> jax.Array:
    """Inverse of `vivit.patchify` for VIDEO_SHAPE and (2, 8, 8) tubelets."""
    return patches.reshape(2, *GRID, 2, 8, 8, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(VIDEO_SHAPE)


def test_masked_tubelets_do_not_reach_the_output():
    model = tiny(mask_ratio=0.5)
    variables = nn.meta.unbox(init(tiny()))
    clip = video()
    out, state = masked_apply(model, variables, clip, 0)
    kept = np.asarray(state["intermediates"]["kept_tubelets"][0])
    dropped = np.setdiff1d(np.arange(NUM_TUBELETS), kept[0])
    patches = vivit.patchify(clip, (2, 8, 8)).at[0, dropped].set(5.0)
    out_changed, _ = masked_apply(model, variables, unpatchify(patches), 0)
    np.testing.assert_array_equal(out.pooled, out_changed.pooled)


def test_no_masking_at_eval_or_zero_ratio():
    variables = nn.meta.unbox(init(tiny()))
    for model, train in [(tiny(mask_ratio=0.5), False), (tiny(mask_ratio=0.0), True)]:
        out, state = masked_apply(model, variables, video(), 0, train)
        assert out.tokens.shape == (2, NUM_TUBELETS, 64) and "intermediates" not in state


def test_patchify_round_trips_and_grid():
    clip = video()
    patches = vivit.patchify(clip, (2, 8, 8))
    assert patches.shape == (2, NUM_TUBELETS, 2 * 8 * 8 * 3)
    assert vivit.tubelet_grid(clip.shape, (2, 8, 8)) == GRID == tiny().tubelet_grid(clip.shape)
    np.testing.assert_array_equal(unpatchify(patches), clip)
    np.testing.assert_array_equal(patches[0, 1], clip[0, 0:2, 0:8, 8:16].reshape(-1))  # second token: next column
    with pytest.raises(ValueError, match="not divisible"):
        vivit.patchify(video(shape=(1, 8, 30, 32, 3)), (2, 8, 8))


def stack_layers(tree):
    """Per-layer parameters {layer_0, layer_1, ...} -> the scanned layout {layers: {block: stacked}}."""
    if not isinstance(tree, dict):
        return tree
    if "layer_0" in tree:
        blocks = [tree[f"layer_{i}"] for i in range(len(tree))]
        return {"layers": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}}
    return {key: stack_layers(value) for key, value in tree.items()}


@pytest.mark.parametrize("variant", vivit.VARIANTS)
def test_scan_and_remat_match_the_loop(variant):
    loop = tiny(variant)
    params = nn.meta.unbox(init(loop))["params"]
    scanned = tiny(variant, scan=True, remat="full")
    scanned_variables = jax.eval_shape(scanned.init, jax.random.key(1), video())
    assert_all_leaves_named(scanned_variables)
    stacked = stack_layers(params)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, nn.meta.unbox(scanned_variables)["params"])
    np.testing.assert_allclose(forward(scanned)({"params": stacked}, video()).pooled,
                               forward(loop)({"params": params}, video()).pooled, atol=1e-5)


def test_dropout_under_scan_follows_its_rng():
    model = tiny("factorised_self_attention", dropout=0.1, scan=True)
    variables = nn.meta.unbox(init(model))
    run = jax.jit(lambda rng: model.apply(variables, video(), train=True, rngs={"dropout": rng}).pooled)
    assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))
    np.testing.assert_array_equal(run(jax.random.key(0)), run(jax.random.key(0)))


@pytest.mark.parametrize("variant", vivit.VARIANTS)
def test_bfloat16_compute_stays_close_to_float32(variant):
    variables = nn.meta.unbox(init(tiny(variant)))
    out32 = forward(tiny(variant))(variables, video())
    out16 = forward(tiny(variant, dtype=jnp.bfloat16))(variables, video())
    assert out16.tokens.dtype == jnp.bfloat16
    for low, high in [(out16.pooled, out32.pooled), (out16.tokens, out32.tokens)]:
        assert np.abs(np.asarray(low, np.float32) - np.asarray(high)).max() < BF16_TOLERANCE


def test_invalid_settings_raise_clear_errors():
    for overrides, message in [(dict(variant="divided"), "unknown variant"), (dict(pool="max"), "unknown pool"),
                               (dict(mask_ratio=1.0), "mask_ratio"), (dict(remat="some"), "unknown remat")]:
        with pytest.raises(ValueError, match=message):
            jax.eval_shape(tiny(**overrides).init, jax.random.key(0), video())


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_sizes_build_for_64px_16_frames(name):
    shape = (1, 16, 64, 64, 3)
    for variant in vivit.VARIANTS:
        model = ViViT(variant=variant, **vivit.SIZES[name])
        out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), video(shape=shape))
        assert out.pooled.shape == (1, vivit.SIZES[name]["width"])
        if variant == "joint":  # 512 tubelets + CLS, as in the HF VivitModel it is benchmarked against
            assert variables["params"]["position_embedding"].value.shape == (1 + 512, vivit.SIZES[name]["width"])
    frame_model = SingleFrame(**single_frame.SIZES[name])
    assert jax.eval_shape(frame_model.init, jax.random.key(0), video(shape=shape))


def test_single_frame_sees_only_the_middle_frame():
    model = SingleFrame(**single_frame.SIZES["tiny"])
    variables = init(model)
    assert_all_leaves_named(variables)
    assert_gradients_flow(model, variables, (32 // 8) ** 2)
    clip = video()
    others = video(9).at[:, VIDEO_SHAPE[1] // 2].set(clip[:, VIDEO_SHAPE[1] // 2])
    apply = forward(model)
    first, second = apply(variables, clip), apply(variables, others)
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.pooled, second.pooled)
    changed = apply(variables, clip.at[:, VIDEO_SHAPE[1] // 2].add(0.1))
    assert not np.allclose(changed.pooled, first.pooled)
