"""Image ViT -> video ViViT inflation: kernels ("central", "average"), position resizing, and the inflated model
against transformers' ViTModel on tiny random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_hf_vivit import randomize
from vlm_jax.convert import inflate
from vlm_jax.errors import UserError
from vlm_jax.models.video import vivit
from vlm_jax.models.video.vivit import SIZES, ViViT

VIT_CONFIG = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=256)
VIDEO_SHAPE = (2, 8, 32, 32, 3)  # tubelets (2, 8, 8): a 4 x 4 x 4 grid, the ViT's 4 x 4 patches per slice
ATOL = 1e-5


def random_vit(seed: int = 0, **overrides):
    """A transformers ViTModel with every parameter random (HF zeroes the CLS token and positions)."""
    transformers = pytest.importorskip("transformers", reason="the ViT reference needs transformers")
    return randomize(transformers.ViTModel(transformers.ViTConfig(**VIT_CONFIG, **overrides)), seed)


@pytest.fixture(scope="module")
def vit():
    """A ViT computing what ours computes (tanh GELU, eps 1e-6), so inflated outputs can match exactly."""
    pytest.importorskip("torch", reason="the ViT reference needs torch")
    pytest.importorskip("transformers", reason="the ViT reference needs transformers")
    return random_vit(hidden_act="gelu_fast", layer_norm_eps=1e-6)


def vit_patches(vit_model, frames: np.ndarray) -> np.ndarray:
    """The ViT's 2D patch embedding (no positions) of frames [B, H, W, C] -> [B, S, D]."""
    import torch
    with torch.no_grad():
        return vit_model.embeddings.patch_embeddings(torch.from_numpy(frames.transpose(0, 3, 1, 2).copy())).numpy()


def vit_hidden(vit_model, frames: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        pixels = torch.from_numpy(frames.transpose(0, 3, 1, 2).copy())
        return vit_model(pixel_values=pixels).last_hidden_state.numpy()


def tubelet_tokens(params, video: np.ndarray) -> np.ndarray:
    """Our tubelet embedding (no positions) of a [B, T, H, W, C] video -> [B, T', S, D]."""
    tokens = vivit.TubeletEmbedding(64, (2, 8, 8)).apply({"params": params["tubelet_embedding"]}, jnp.asarray(video))
    return np.asarray(tokens).reshape(video.shape[0], video.shape[1] // 2, -1, 64)


def random_video(shape=VIDEO_SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


def test_inflate_kernel():
    kernel = np.random.default_rng(0).normal(size=(64, 3, 8, 8)).astype(np.float32)
    central = inflate.inflate_kernel(kernel, 3, "central")
    assert central.shape == (64, 3, 3, 8, 8)
    np.testing.assert_array_equal(central[:, :, 1], kernel)
    assert not central[:, :, [0, 2]].any()
    average = inflate.inflate_kernel(kernel, 4, "average")
    assert average.shape == (64, 3, 4, 8, 8)
    np.testing.assert_allclose(average.sum(axis=2), kernel, rtol=1e-6)
    with pytest.raises(UserError, match="unknown inflation method 'sum'"):
        inflate.inflate_kernel(kernel, 2, "sum")


def test_resize_positions():
    table = np.random.default_rng(0).normal(size=(1 + 16, 8)).astype(np.float32)
    np.testing.assert_array_equal(inflate.resize_positions(table, (4, 4), (1, 4, 4)), table)  # unchanged: identity
    tiled = inflate.resize_positions(table, (4, 4), (3, 4, 4))
    assert tiled.shape == (1 + 3 * 16, 8)
    np.testing.assert_array_equal(tiled[0], table[0])
    for slice_ in tiled[1:].reshape(3, 16, 8):  # the same spatial table in every time slice
        np.testing.assert_array_equal(slice_, table[1:])
    resized = inflate.resize_positions(table, (4, 4), (2, 6, 5))
    assert resized.shape == (1 + 2 * 30, 8)
    np.testing.assert_array_equal(resized[0], table[0])  # the CLS position is kept
    constant = np.tile(np.arange(8, dtype=np.float32), (17, 1))
    np.testing.assert_allclose(inflate.resize_positions(constant, (4, 4), (2, 7, 3)), np.tile(constant[:1], (43, 1)),
                               rtol=1e-6)
    no_cls = inflate.resize_positions(table[1:], (4, 4), (2, 2, 2), has_cls=False)
    assert no_cls.shape == (8, 8)
    with pytest.raises(UserError, match="3x5 patch grid has 15 positions"):
        inflate.resize_positions(table, (3, 5), (1, 3, 5))


def test_average_inflation_on_a_static_video_is_the_2d_embedding(vit):
    params = inflate.inflate_hf_vit(vit.state_dict(), ViViT(**SIZES["tiny"]), VIDEO_SHAPE, "average")
    frame = random_video((2, 32, 32, 3))
    static = np.repeat(frame[:, None], VIDEO_SHAPE[1], axis=1)
    ours, theirs = tubelet_tokens(params, static), vit_patches(vit, frame)
    difference = np.abs(ours - theirs[:, None]).max()
    print(f"average inflation, static video: max |3D - 2D| = {difference:.3g}")
    assert difference <= ATOL


def test_central_inflation_is_the_central_frames_2d_embedding(vit):
    params = inflate.inflate_hf_vit(vit.state_dict(), ViViT(**SIZES["tiny"]), VIDEO_SHAPE, "central")
    video = random_video()
    ours = tubelet_tokens(params, video)
    theirs = np.stack([vit_patches(vit, video[:, 2 * i + 1]) for i in range(4)], axis=1)  # frame t // 2 of each
    difference = np.abs(ours - theirs).max()
    print(f"central inflation, random video: max |3D - 2D| = {difference:.3g}")
    assert difference <= ATOL


def test_inflated_model_runs_end_to_end(vit):
    """One tubelet in time: the inflated ViViT is the ViT on the central frame. Then a longer, larger clip
    (positions resized 4x4 -> 6x6 and repeated over 4 time slices) runs to finite outputs."""
    model = ViViT(**SIZES["tiny"])
    clip = random_video((2, 2, 32, 32, 3), seed=1)
    params = inflate.inflate_hf_vit(vit.state_dict(), model, clip.shape, "central")
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(clip))
    ours = np.concatenate([np.asarray(out.pooled)[:, None], np.asarray(out.tokens)], axis=1)
    difference = np.abs(ours - vit_hidden(vit, clip[:, 1])).max()
    print(f"inflated ViViT vs ViT (T' = 1): max diff {difference:.3g}")
    assert difference <= ATOL

    stock = random_vit()  # the exact GELU and eps 1e-12 ours does not compute: close, not equal
    stock_params = inflate.inflate_hf_vit(stock.state_dict(), model, clip.shape, "central")
    out = jax.jit(model.apply)({"params": stock_params}, jnp.asarray(clip))
    ours = np.concatenate([np.asarray(out.pooled)[:, None], np.asarray(out.tokens)], axis=1)
    difference = np.abs(ours - vit_hidden(stock, clip[:, 1])).max()
    print(f"inflated ViViT vs stock ViT (erf GELU, eps 1e-12; T' = 1): max diff {difference:.3g}")
    assert difference <= 5e-3

    shape = (2, 8, 48, 48, 3)
    params = inflate.inflate_hf_vit(vit.state_dict(), model, shape, "average")
    assert params["position_embedding"].shape == (1 + 4 * 36, 64)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(random_video(shape)))
    assert out.tokens.shape == (2, 4 * 36, 64) and out.pooled.shape == (2, 64)
    assert np.isfinite(np.asarray(out.tokens)).all()


def test_refusals(vit):
    model = ViViT(**SIZES["tiny"])
    tensors = {name: value.numpy() for name, value in vit.state_dict().items()}
    with pytest.raises(UserError, match=r"the ViT's patches are 8x8 but the tubelet \(2, 4, 4\) is 4x4"):
        inflate.inflate_hf_vit(tensors, ViViT(**{**SIZES["tiny"], "tubelet": (2, 4, 4)}), VIDEO_SHAPE)
    with pytest.raises(UserError, match="unknown inflation method 'sum'"):
        inflate.inflate_hf_vit(tensors, model, VIDEO_SHAPE, "sum")
    del tensors["layers.0.attention.k_proj.bias"]
    tensors["embeddings.mask_token"] = np.zeros((1, 1, 64), np.float32)
    with pytest.raises(UserError, match=r"missing \['layers.0.attention.k_proj.bias'\].*"
                                        r"unexpected \['embeddings.mask_token'\]"):
        inflate.inflate_hf_vit(tensors, model, VIDEO_SHAPE)


def test_vit_inflate_writes_a_tower_file_a_run_can_start_from(vit, tmp_path):
    """`vlm convert vit_inflate`: a saved ViT folder -> a tower file whose variables are `inflate_hf_vit`'s,
    read back through the path `init_from.video_encoder` takes."""
    from conftest import run_vlm
    from vlm_jax import pretrained
    from vlm_jax.convert import mapping
    vit.save_pretrained(tmp_path / "vit")
    out = tmp_path / "vivit.safetensors"
    run_vlm("convert", "vit_inflate", "--src", str(tmp_path / "vit"), "--out", str(out), "--num_frames",
            str(VIDEO_SHAPE[1]), "--method", "average")
    model = ViViT(variant="joint", pool="cls", width=64, depth=2, num_heads=2, mlp_dim=256, tubelet=(2, 8, 8))
    expected = inflate.inflate_hf_vit(vit.state_dict(), model, VIDEO_SHAPE, "average")
    import flax.linen as nn
    init = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros(VIDEO_SHAPE))))
    target = {"params": init["params"]}
    loaded = mapping.flatten(pretrained.tower_variables(str(out), target)["params"])
    assert loaded.keys() == mapping.flatten(expected).keys()
    for name, value in mapping.flatten(expected).items():
        np.testing.assert_array_equal(loaded[name], np.asarray(value), err_msg=name)
    refused = run_vlm("convert", "vit_inflate", "--src", str(tmp_path), "--out", str(out), "--num_frames", "8",
                      check=False)
    assert refused.returncode == 2 and "is not a Hugging Face model folder" in refused.stderr
