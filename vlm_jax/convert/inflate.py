"""Image ViT weights -> a video ViViT (joint): 2D patch kernels inflated into 3D tubelets, positions resized.

Why: a video transformer trained from scratch needs far more video than we have; ViViT (Arnab et al., 2021)
and I3D (Carreira & Zisserman, 2017) start from an image model instead. Transformers' `ViTModel` layers have
exactly the names and layouts of its `VivitModel` layers, so the conversion is: turn the ViT state dict
into a ViViT one (two tensors change), then load that with `hf_vivit`'s table, which checks every name and
shape. Only two things differ between an image and a video model:

  patch kernel   ViT [D, C, p, p] -> tubelet [D, C, t, p, p] (HF Conv3d layout; ours [t, p, p, C, D]):
                   "central"  the 2D kernel on the tubelet's central frame (index t // 2), zeros elsewhere: each
                              tubelet token starts as the ViT's patch token of that frame (ViViT's choice);
                   "average"  the 2D kernel / t on every frame (I3D's): on a static clip each tubelet token
                              equals the ViT's patch token of the frame;
  positions      ViT [1 + h * w, D] -> [1 + T' * H' * W', D]: the spatial grid resized (bilinear by default)
                 when the tubelet grid's H' x W' differs from h x w, repeated over the T' time slices (the
                 same table in each, time-major like our tokens), the CLS row kept as row 0.

On a clip of one tubelet in time (T' = 1) the inflated ViViT computes the ViT exactly: its output is the ViT's
on the central frame ("central") or on the frames' mean ("average"). With T' > 1 it does not: every patch key
then appears T' times in joint attention but the CLS key once, which shifts the attention weights.

One difference the weights cannot carry: HF ViT uses the exact (erf) GELU and LayerNorm eps 1e-12, ours the
tanh GELU and eps 1e-6 (as HF ViViT), so even at T' = 1 the inflated model matches a stock ViT only to within
those approximations (under 1e-3 on the final hidden states of the tiny random ViT in tests/convert/test_inflate.py;
1e-6 when that ViT itself uses hidden_act="gelu_fast" and eps 1e-6): a starting point for training, not a
bit-exact copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vlm_jax.convert import hf_vivit, towers
from vlm_jax.errors import UserError
from vlm_jax.models.video.vivit import ViViT, tubelet_grid

METHODS = ("central", "average")
INTERPOLATIONS = ("linear", "cubic", "nearest")  # jax.image.resize methods, without antialiasing
KERNEL = "embeddings.patch_embeddings.projection.weight"
POSITIONS = "embeddings.position_embeddings"
DEFAULT_IGNORE = hf_vivit.DEFAULT_IGNORE  # ViT's pooler and ViTForImageClassification's classifier


def inflate_kernel(weight: np.ndarray, frames: int, method: str = "central") -> np.ndarray:
    """A torch Conv2d patch kernel [D, C, p, p] -> a Conv3d tubelet kernel [D, C, frames, p, p] (see the module)."""
    if method not in METHODS:
        raise UserError(f"unknown inflation method {method!r}; choose one of {', '.join(METHODS)}")
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise UserError(f"a 2D patch kernel is [D, C, p, p], got shape {weight.shape}")
    if method == "average":
        return np.repeat(weight[:, :, None] / frames, frames, axis=2)
    inflated = np.zeros((*weight.shape[:2], frames, *weight.shape[2:]), weight.dtype)
    inflated[:, :, frames // 2] = weight
    return inflated


def square_grid(rows: int) -> tuple[int, int]:
    """The h x w patch grid of a table of `rows` = h * w positions, when it is square."""
    side = int(round(rows ** 0.5))
    if side * side != rows:
        raise UserError(f"{rows} patch positions are not a square grid; pass source_grid=(h, w)")
    return side, side


def resize_positions(table: np.ndarray, source_grid: tuple[int, int], target_grid: tuple[int, int, int],
                     has_cls: bool = True, interpolation: str = "linear") -> np.ndarray:
    """A ViT position table [(1 +) h * w, D] -> a video one [(1 +) T' * H' * W', D] (see the module).

    `source_grid` is (h, w), `target_grid` the tubelet grid (T', H', W'); the spatial table is resized only when
    (H', W') != (h, w), then tiled over the T' time slices (time-major); a leading CLS row is kept as is.
    """
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    table = np.asarray(table)
    cls, spatial = (table[:1], table[1:]) if has_cls else (table[:0], table)
    (height, width), (frames, new_height, new_width) = source_grid, target_grid
    if spatial.shape[0] != height * width:
        raise UserError(f"a {height}x{width} patch grid has {height * width} positions, the table "
                        f"{spatial.shape[0]}{' besides CLS' if has_cls else ''}")
    dim = spatial.shape[-1]
    grid = spatial.reshape(height, width, dim)
    if (new_height, new_width) != (height, width):
        resized = jax.image.resize(grid.astype(np.float32), (new_height, new_width, dim), interpolation,
                                   antialias=False)
        grid = np.asarray(resized).astype(table.dtype)
    spatial = np.tile(grid.reshape(new_height * new_width, dim), (frames, 1))
    return np.concatenate([cls, spatial], axis=0)


def vit_to_vivit_state(tensors: Mapping[str, np.ndarray], tubelet: tuple[int, int, int],
                       grid: tuple[int, int, int], method: str = "central",
                       source_grid: tuple[int, int] | None = None,
                       interpolation: str = "linear") -> dict[str, np.ndarray]:
    """A ViT state dict (transformers 5.x names, numpy) -> a VivitModel one for tubelet `tubelet` on a tubelet grid
    `grid` (T', H', W'): the patch kernel inflated, the positions resized, every other tensor passed through."""
    state = dict(tensors)
    if KERNEL in state:
        weight = np.asarray(state[KERNEL])
        if weight.ndim != 4:
            raise UserError(f"{KERNEL} {weight.shape} is not a 2D patch kernel [D, C, p, p]: is this an image ViT?")
        if tuple(weight.shape[2:]) != tuple(tubelet[1:]):
            raise UserError(f"the ViT's patches are {weight.shape[2]}x{weight.shape[3]} but the tubelet "
                            f"{tuple(tubelet)} is {tubelet[1]}x{tubelet[2]}: they must match")
        state[KERNEL] = inflate_kernel(weight, tubelet[0], method)
    if POSITIONS in state:
        table = np.asarray(state[POSITIONS])
        if table.ndim != 3 or table.shape[0] != 1:
            raise UserError(f"{POSITIONS} {table.shape} is not [1, 1 + h * w, D]")
        source_grid = source_grid or square_grid(table.shape[1] - 1)
        state[POSITIONS] = resize_positions(table[0], source_grid, grid, True, interpolation)[None]
    return state


def inflate_hf_vit(source: str | Path | Mapping[str, Any], model: ViViT, video_shape: tuple[int, ...],
                   method: str = "central", source_grid: tuple[int, int] | None = None,
                   interpolation: str = "linear", ignore: Iterable[str] = DEFAULT_IGNORE) -> dict:
    """A HF image ViT checkpoint (`.safetensors` path or state dict) -> params of our joint ViViT `model` for clips of
    `video_shape` ([B,] T, H, W, C; apply with {"params": ...}).

    `method` inflates the patch kernel ("central" or "average"); `source_grid` is the ViT's (h, w) patch grid
    (default: square, from its position table); `interpolation` resizes the positions when the grid changes.
    Raises UserError naming missing, unexpected or mis-shaped tensors; `ignore` lists checkpoint names to skip.
    """
    hf_vivit.check_model(model)
    if method not in METHODS:
        raise UserError(f"unknown inflation method {method!r}; choose one of {', '.join(METHODS)}")
    tubelet = tuple(model.tubelet)
    try:
        grid = tubelet_grid((1, *video_shape[-4:]), tubelet)
    except ValueError as error:
        raise UserError(str(error)) from None
    state = vit_to_vivit_state(hf_vivit.read_tensors(source), tubelet, grid, method, source_grid, interpolation)
    what = (f"{'the state dict' if isinstance(source, Mapping) else source} (a ViT inflated into a "
            f"{model.depth}-layer ViViT)")
    return hf_vivit.params_from_state(state, model, video_shape, ignore, what)


def inflate_folder(src: str | Path, out: str | Path, num_frames: int, tubelet_time: int = 2,
                   method: str = "central") -> dict:
    """`vlm convert vit_inflate`: a Hugging Face image ViT folder -> the tower file of a joint ViViT with its
    dimensions, for clips of `num_frames` frames at the ViT's image size with (tubelet_time, patch, patch)
    tubelets; a run starts its video tower from it with `init_from.video_encoder=OUT`."""
    weights, config = towers.hf_folder(Path(src))
    size, patch = config["image_size"], config["patch_size"]
    model = ViViT(variant="joint", pool="cls", width=config["hidden_size"], depth=config["num_hidden_layers"],
                  num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
                  tubelet=(tubelet_time, patch, patch))
    video_shape = (1, num_frames, size, size, config.get("num_channels", 3))
    params = inflate_hf_vit(weights, model, video_shape, method)
    written = towers.write_tower(towers.Converted(model, {"params": params}, str(weights),
                                                  {"video_shape": video_shape}), out)
    return {"source": str(weights), "wrote": str(out), "tensors": written, "video_shape": list(video_shape)}

