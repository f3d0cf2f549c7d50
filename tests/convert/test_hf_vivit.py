"""The HF ViViT converter: our joint ViViT reproduces VivitModel's hidden states, the round trip is bit-exact,
VivitModel strictly loads what we write, and bad checkpoints are refused by name. Tiny random models only."""

import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vlm_jax.convert import hf_vivit, mapping
from vlm_jax.errors import UserError
from vlm_jax.models.video.vivit import SIZES, ViViT

HF_CONFIG = dict(image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=256)
VIDEO_SHAPE = (2, 8, 32, 32, 3)
PARITY_ATOL = 1e-5  # measured 2.4e-6 (float32, outputs after LayerNorm of order 1)


def randomize(model, seed: int = 0):
    """Every parameter random (HF initialises the CLS token and positions to zero, which would hide their mapping)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.1)
            if "norm" in name and name.endswith("weight"):
                param.add_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def hf():
    """(VivitConfig, a random VivitModel with pooler, our model, our params loaded from its state dict)."""
    pytest.importorskip("torch", reason="the HF ViViT comparison needs torch")
    transformers = pytest.importorskip("transformers", reason="the HF ViViT comparison needs transformers")
    config = transformers.VivitConfig(**HF_CONFIG)
    hf_model = randomize(transformers.VivitModel(config))
    model = hf_vivit.model_from_hf_config(config)
    params = hf_vivit.load_hf_vivit(hf_model.state_dict(), model, VIDEO_SHAPE)
    return config, hf_model, model, params


def hf_state(hf_model) -> dict:
    return {name: value.numpy() for name, value in hf_model.state_dict().items()}


def test_table_covers_every_param_once():
    model = ViViT(**SIZES["tiny"])
    ours = [path for path, _ in hf_vivit.mapping(model.depth).values()]
    assert len(ours) == len(set(ours))
    assert set(ours) == set(hf_vivit.expected_shapes(model, VIDEO_SHAPE))


def test_model_from_hf_config(hf):
    config, _, model, _ = hf
    assert model == ViViT(variant="joint", pool="cls", **{**SIZES["tiny"], "temporal_depth": 1})
    assert hf_vivit.video_shape_from_hf_config(config, batch=2) == VIDEO_SHAPE
    transformers = pytest.importorskip("transformers")
    with pytest.raises(UserError, match=r"hidden_act='gelu'.*layer_norm_eps=1e-12.*qkv_bias=False"):
        hf_vivit.model_from_hf_config(transformers.VivitConfig(**HF_CONFIG, hidden_act="gelu",
                                                               layer_norm_eps=1e-12, qkv_bias=False))


def test_forward_matches_hugging_face(hf):
    _, hf_model, model, params = hf
    video = np.random.default_rng(0).uniform(-1.0, 1.0, VIDEO_SHAPE).astype(np.float32)
    difference = hf_vivit.verify(params, model, hf_model, video)
    print(f"max |HF - ours| over last_hidden_state: {difference:.3g}")
    assert difference <= PARITY_ATOL


def test_round_trip_is_bit_exact_and_loads_strictly(hf, tmp_path):
    import torch
    transformers = pytest.importorskip("transformers")
    config, hf_model, model, params = hf
    source = hf_state(hf_model)
    pooler = {name: value for name, value in source.items() if name.startswith("pooler.")}
    path = tmp_path / "model.safetensors"
    save_file({**hf_vivit.hf_state(params, model), **pooler}, str(path))
    written = load_file(str(path))
    assert written.keys() == source.keys()
    for name in source:
        np.testing.assert_array_equal(written[name], source[name], err_msg=name)
    with_pooler = transformers.VivitModel(config)
    with_pooler.load_state_dict({k: torch.from_numpy(v) for k, v in written.items()}, strict=True)

    save_file(hf_vivit.hf_state(params, model), str(path))  # no pooler: what a model without one loads
    without = transformers.VivitModel(config, add_pooling_layer=False)
    without.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(path)).items()}, strict=True)
    again = mapping.flatten(hf_vivit.load_hf_vivit(path, model, VIDEO_SHAPE))
    for key, value in mapping.flatten(params).items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_legacy_names_load_the_same(hf):
    """Hub checkpoints saved before transformers 5 (vivit.encoder.layer.{i}.attention.attention.query, ...)."""
    _, hf_model, model, params = hf
    old = {"layers.": "encoder.layer.", "attention.q_proj": "attention.attention.query",
           "attention.k_proj": "attention.attention.key", "attention.v_proj": "attention.attention.value",
           "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    pattern = re.compile("|".join(re.escape(new) for new in old))
    legacy = {"vivit." + pattern.sub(lambda m: old[m.group(0)], name): value
              for name, value in hf_state(hf_model).items()}
    assert "vivit.encoder.layer.1.output.dense.weight" in legacy
    loaded = mapping.flatten(hf_vivit.load_hf_vivit(legacy, model, VIDEO_SHAPE))
    for key, value in mapping.flatten(params).items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_refuses_missing_unexpected_and_mis_shaped_tensors(hf, tmp_path):
    _, hf_model, model, _ = hf
    tensors = hf_state(hf_model)
    del tensors["layers.1.mlp.fc2.bias"]
    tensors["head.weight"] = np.zeros((3, 64), np.float32)
    with pytest.raises(UserError, match=r"missing \['layers.1.mlp.fc2.bias'\].*unexpected \['head.weight'\]"):
        hf_vivit.load_hf_vivit(tensors, model, VIDEO_SHAPE)
    with pytest.raises(UserError, match=r"unexpected \['pooler.dense.bias', 'pooler.dense.weight'\]"):
        hf_vivit.load_hf_vivit(hf_state(hf_model), model, VIDEO_SHAPE, ignore=())
    with pytest.raises(UserError, match=r"embeddings.position_embeddings \(1, 65, 64\) -> position_embedding "
                                        r"\(129, 64\)"):
        hf_vivit.load_hf_vivit(hf_state(hf_model), model, (2, 16, 32, 32, 3))
    with pytest.raises(UserError, match="missing.*layers.2.attention.q_proj.weight"):
        hf_vivit.load_hf_vivit(hf_state(hf_model), model.clone(depth=3), VIDEO_SHAPE)
    with pytest.raises(UserError, match="not divisible"):
        hf_vivit.load_hf_vivit(hf_state(hf_model), model, (2, 7, 32, 32, 3))
    with pytest.raises(UserError, match="variant='joint'"):
        hf_vivit.load_hf_vivit(hf_state(hf_model), model.clone(variant="factorised_encoder"), VIDEO_SHAPE)
    with pytest.raises(UserError, match="no safetensors checkpoint"):
        hf_vivit.load_hf_vivit(tmp_path / "absent.safetensors", model, VIDEO_SHAPE)
