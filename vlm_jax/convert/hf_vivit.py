"""Hugging Face `VivitModel` safetensors <-> our `ViViT(variant="joint", pool="cls")` params, by a mapping table.

Why a table and not a port: HF's joint ViViT and ours are the same network, layer for layer: pre-LN
blocks, a CLS token prepended, one learned position table [1 + N, D] whose row 0 is the CLS position,
tanh-approximated GELU ("gelu_fast", flax's default `nn.gelu`), LayerNorm eps 1e-6, a final LayerNorm,
and tubelet tokens in the same time-major order (HF flattens Conv3d output [D, T', H', W']; ours is
(i * H' + j) * W' + k). So every tensor maps one to one, only re-laid out (Linear transposed, Conv3d
[D, C, t, h, w] -> [t, h, w, C, D], leading singleton axes dropped), and the HF output equals ours:
last_hidden_state = [pooled, *tokens] (our `Encoded` splits the CLS row off as `pooled`).

HF's tanh pooler (`pooler.dense`) has no counterpart in our model; the default `ignore` skips it (and
`classifier.*`, the head of `VivitForVideoClassification`). Loading refuses missing, unexpected or
mis-shaped tensors and names them. Checkpoints in transformers' older names (`encoder.layer.{i}.attention.
attention.query`, `intermediate.dense`, ... and a `vivit.` prefix, as on the Hub) are renamed first with
the same rules transformers applies when it loads them.

Our params' shapes depend on the clips the model will see (the position table has 1 + N rows), so
loading takes the video shape; `video_shape_from_hf_config` gives the one a HF config was built for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from vlm_jax.convert import mapping as mapping_lib
from vlm_jax.errors import UserError
from vlm_jax.models.video.vivit import ViViT, tubelet_grid

GLOBAL_TABLE = (
    ("embeddings.cls_token", "cls_token", "drop_two"),  # HF (1, 1, D) -> (D,)
    ("embeddings.position_embeddings", "position_embedding", "drop_batch"),  # (1, 1 + N, D) -> (1 + N, D)
    ("embeddings.patch_embeddings.projection.weight", "tubelet_embedding/kernel", "conv"),
    ("embeddings.patch_embeddings.projection.bias", "tubelet_embedding/bias", "identity"),
    ("layernorm.weight", "norm/scale", "identity"),
    ("layernorm.bias", "norm/bias", "identity"),
)

# Shared with `inflate`: transformers' ViTModel layers have exactly these names and layouts.
LAYER_TABLE = (
    ("layers.{i}.layernorm_before.weight", "transformer/layer_{i}/norm_attention/scale", "identity"),
    ("layers.{i}.layernorm_before.bias", "transformer/layer_{i}/norm_attention/bias", "identity"),
    ("layers.{i}.attention.q_proj.weight", "transformer/layer_{i}/attention/query/kernel", "transpose"),
    ("layers.{i}.attention.q_proj.bias", "transformer/layer_{i}/attention/query/bias", "identity"),
    ("layers.{i}.attention.k_proj.weight", "transformer/layer_{i}/attention/key/kernel", "transpose"),
    ("layers.{i}.attention.k_proj.bias", "transformer/layer_{i}/attention/key/bias", "identity"),
    ("layers.{i}.attention.v_proj.weight", "transformer/layer_{i}/attention/value/kernel", "transpose"),
    ("layers.{i}.attention.v_proj.bias", "transformer/layer_{i}/attention/value/bias", "identity"),
    ("layers.{i}.attention.o_proj.weight", "transformer/layer_{i}/attention/out/kernel", "transpose"),
    ("layers.{i}.attention.o_proj.bias", "transformer/layer_{i}/attention/out/bias", "identity"),
    ("layers.{i}.layernorm_after.weight", "transformer/layer_{i}/norm_mlp/scale", "identity"),
    ("layers.{i}.layernorm_after.bias", "transformer/layer_{i}/norm_mlp/bias", "identity"),
    ("layers.{i}.mlp.fc1.weight", "transformer/layer_{i}/mlp/fc1/kernel", "transpose"),
    ("layers.{i}.mlp.fc1.bias", "transformer/layer_{i}/mlp/fc1/bias", "identity"),
    ("layers.{i}.mlp.fc2.weight", "transformer/layer_{i}/mlp/fc2/kernel", "transpose"),
    ("layers.{i}.mlp.fc2.bias", "transformer/layer_{i}/mlp/fc2/bias", "identity"),
)

# Heads our encoder has no counterpart for: VivitModel's tanh pooler and VivitForVideoClassification's classifier.
DEFAULT_IGNORE = ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias")

# transformers' renames for checkpoints saved before 5.x (conversion_mapping "ViTModel", which VivitModel
# shares), in order: "attention.output.dense" must become o_proj before "output.dense" becomes fc2.
LEGACY_RENAMES = (
    (r"^encoder\.layer\.", "layers."),
    (r"attention\.attention\.query", "attention.q_proj"),
    (r"attention\.attention\.key", "attention.k_proj"),
    (r"attention\.attention\.value", "attention.v_proj"),
    (r"attention\.output\.dense", "attention.o_proj"),
    (r"intermediate\.dense", "mlp.fc1"),
    (r"output\.dense", "mlp.fc2"),
)
PREFIXES = ("vivit.", "vit.")  # *ForVideoClassification / *ForImageClassification wrap the encoder

# GELUs that are the tanh approximation flax's nn.gelu computes (ours); "gelu" in HF is the exact erf form.
TANH_GELUS = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh")
LAYER_NORM_EPS = 1e-6  # layers.layer_norm's epsilon


def mapping(depth: int) -> mapping_lib.Table:
    """Checkpoint name -> (our param path, transform) for a `depth`-layer joint ViViT."""
    return mapping_lib.expand(GLOBAL_TABLE, LAYER_TABLE, depth)


def check_model(model: ViViT) -> None:
    """The table describes the joint variant pooled by CLS, with unscanned layers; refuse anything else."""
    if model.variant != "joint" or model.pool != "cls" or model.scan:
        raise UserError(f"Hugging Face ViViT converts to ViViT(variant='joint', pool='cls', scan=False), "
                        f"not variant={model.variant!r}, pool={model.pool!r}, scan={model.scan}")


def model_from_hf_config(hf_config: Any) -> ViViT:
    """Our ViViT with the dimensions of a transformers `VivitConfig` (or its dict); refuses what ours cannot compute."""
    get = (lambda key: hf_config.get(key)) if isinstance(hf_config, Mapping) else (
        lambda key: getattr(hf_config, key, None))
    width, heads = get("hidden_size"), get("num_attention_heads")
    problems = []
    if get("hidden_act") not in TANH_GELUS:
        problems.append(f"hidden_act={get('hidden_act')!r} (ours is the tanh GELU: one of {', '.join(TANH_GELUS)})")
    if get("layer_norm_eps") is not None and not np.isclose(get("layer_norm_eps"), LAYER_NORM_EPS, rtol=1e-6, atol=0):
        problems.append(f"layer_norm_eps={get('layer_norm_eps')} (ours is {LAYER_NORM_EPS})")
    if get("qkv_bias") is False:
        problems.append("qkv_bias=False (our query/key/value layers have biases)")
    if get("head_dim") not in (None, width // heads):
        problems.append(f"head_dim={get('head_dim')} (ours is hidden_size / num_attention_heads = {width // heads})")
    if problems:
        raise UserError(f"this ViViT config has no exact counterpart in ours: {'; '.join(problems)}")
    return ViViT(variant="joint", pool="cls", width=width, depth=get("num_hidden_layers"), num_heads=heads,
                 mlp_dim=get("intermediate_size"), tubelet=tuple(get("tubelet_size")))


def video_shape_from_hf_config(hf_config: Any, batch: int = 1) -> tuple[int, int, int, int, int]:
    """The [B, T, H, W, C] clip shape (our layout) a `VivitConfig` was built for."""
    get = (lambda key: hf_config[key]) if isinstance(hf_config, Mapping) else (lambda key: getattr(hf_config, key))
    size = get("image_size")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return batch, get("num_frames"), height, width, get("num_channels")


def hf_names(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint names in transformers 5.x form: a `vivit.`/`vit.` prefix dropped and older names renamed."""
    renamed = {}
    for name, value in tensors.items():
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        for pattern, replacement in LEGACY_RENAMES:
            name = re.sub(pattern, replacement, name)
        if name in renamed:
            raise UserError(f"the checkpoint holds {name!r} twice (under an old and a new name)")
        renamed[name] = value
    return renamed


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (any dtype, any device)."""
    if hasattr(value, "detach"):  # torch, without importing it
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def read_tensors(source: str | Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A safetensors file, or a name -> tensor mapping (e.g. a torch state_dict), as numpy in transformers 5.x names."""
    if isinstance(source, Mapping):
        return hf_names({name: to_numpy(value) for name, value in source.items()})
    if not Path(source).is_file():
        raise UserError(f"no safetensors checkpoint at {source}")
    return hf_names(load_file(str(source)))


def expected_shapes(model: ViViT, video_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Our param path -> shape for `model` on clips of `video_shape` ([B,] T, H, W, C)."""
    shape = (1, *video_shape[-4:])  # zeros inside the traced function: never materialised
    try:
        tubelet_grid(shape, tuple(model.tubelet))
    except ValueError as error:
        raise UserError(str(error)) from None
    return mapping_lib.abstract_shapes(lambda: model.init(jax.random.key(0), jnp.zeros(shape))["params"])


def load_hf_vivit(source: str | Path | Mapping[str, Any], model: ViViT, video_shape: tuple[int, ...],
                  ignore: Iterable[str] = DEFAULT_IGNORE) -> dict:
    """A HF ViViT checkpoint (a `.safetensors` path, or a state dict) -> the params tree of `model` for clips of
    `video_shape` ([B,] T, H, W, C; apply with {"params": ...}).

    Raises UserError naming missing, unexpected or mis-shaped tensors; `ignore` lists checkpoint names to skip.
    """
    what = f"{'the state dict' if isinstance(source, Mapping) else source} (a {model.depth}-layer ViViT)"
    return params_from_state(read_tensors(source), model, video_shape, ignore, what)


def params_from_state(tensors: Mapping[str, np.ndarray], model: ViViT, video_shape: tuple[int, ...],
                      ignore: Iterable[str] = DEFAULT_IGNORE, what: str = "the ViViT state dict") -> dict:
    """`load_hf_vivit` on tensors already in transformers 5.x names; `what` names them in errors."""
    check_model(model)
    shapes = expected_shapes(model, video_shape)
    table = mapping(model.depth)
    mapping_lib.check_covers(table, shapes, "hf_vivit")
    flat = mapping_lib.to_ours(tensors, table, shapes, what, ignore)
    return mapping_lib.unflatten({k: jnp.asarray(v, model.param_dtype) for k, v in flat.items()})


def hf_state(params: dict, model: ViViT) -> dict[str, np.ndarray]:
    """Our joint ViViT params -> float32 tensors in `VivitModel`'s names and layouts (no pooler)."""
    check_model(model)
    tensors = mapping_lib.to_source(mapping_lib.flatten(params), mapping(model.depth), "the ViViT params")
    return {name: np.ascontiguousarray(value, np.float32) for name, value in tensors.items()}


def verify(params: dict, model: ViViT, hf_model: Any, video: Any) -> float:
    """Max |HF - ours| over the final hidden states (every token, CLS included, after the final LayerNorm).

    `video` is [B, T, H, W, C] in our layout (HF's pixel_values are [B, T, C, H, W]); `hf_model` a transformers
    VivitModel, run in eval mode without gradients.
    """
    import torch

    video = np.asarray(video, np.float32)
    hf_model.eval()
    with torch.no_grad():
        theirs = hf_model(pixel_values=torch.from_numpy(video.transpose(0, 1, 4, 2, 3).copy())).last_hidden_state
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(video))
    ours = np.concatenate([np.asarray(out.pooled)[:, None], np.asarray(out.tokens)], axis=1)
    if ours.shape != tuple(theirs.shape):
        raise ValueError(f"our hidden states {ours.shape} and HF's {tuple(theirs.shape)} differ in shape")
    return float(np.max(np.abs(ours - theirs.float().numpy())))
