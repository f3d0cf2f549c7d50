"""Per-frame 2D CNN video encoder: a small ResNet applied to every frame, then temporal modelling.

The trunk (`FrameCNN`) uses GroupNorm rather than BatchNorm so the module keeps no batch statistics:
train and eval compute the same function and there is no mutable state to thread through the step.
It keeps space: its feature map is average-pooled to a `grid` x `grid` map, not to one vector, so
where a shape is (and so where it goes) survives. `CNNRNN` (cnn_rnn.py) reuses the same trunk.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import (Dtype, Encoded, TokenGrid, Transformer, check_choices, constrain, dense, layer_norm,
                                   logical)

TEMPORAL_MODES = ("mean", "transformer")

# Trunk shapes shared with cnn_rnn.py, sized for 64x64 frames.
TRUNK_SIZES = {
    "tiny": {"stem_width": 16, "widths": (16, 32), "depths": (1, 1), "groups": 4},
    "small": {"stem_width": 32, "widths": (32, 64, 128), "depths": (1, 1, 1), "groups": 8},
    "base": {"stem_width": 64, "widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2), "groups": 16},
}

SIZES = {
    "tiny": {**TRUNK_SIZES["tiny"], "embed_dim": 64, "temporal": "mean", "grid": 2},
    "small": {**TRUNK_SIZES["small"], "embed_dim": 256, "temporal": "transformer", "num_layers": 2, "num_heads": 4,
              "mlp_dim": 512, "grid": 4},
    "base": {**TRUNK_SIZES["base"], "embed_dim": 512, "temporal": "transformer", "num_layers": 4, "num_heads": 8,
             "mlp_dim": 2048, "grid": 4},
}


def conv2d(features: int, kernel: int, stride: int, *, dtype: Dtype, param_dtype: Dtype,
           name: str | None = None) -> nn.Conv:
    """A bias-free "SAME" 2D convolution (a norm follows it) with logically named kernel axes."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME", use_bias=False,
                   dtype=dtype, param_dtype=param_dtype, name=name,
                   kernel_init=logical(nn.initializers.he_normal(), (None, None, "conv_in", "conv_out")))


def group_norm(features: int, groups: int, *, dtype: Dtype, param_dtype: Dtype, name: str | None = None):
    """GroupNorm with the largest group count <= `groups` that divides `features`."""
    return nn.GroupNorm(num_groups=math.gcd(groups, features), dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=logical(nn.initializers.ones_init(), ("conv_out",)),
                        bias_init=logical(nn.initializers.zeros_init(), ("conv_out",)))


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3x3 convs); a strided 1x1 projection shortcut when the shape changes."""
    features: int
    stride: int = 1
    groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = conv2d(self.features, 3, self.stride, name="conv1", **kw)(x)
        h = nn.relu(group_norm(self.features, self.groups, name="norm1", **kw)(h))
        h = conv2d(self.features, 3, 1, name="conv2", **kw)(h)
        h = group_norm(self.features, self.groups, name="norm2", **kw)(h)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = conv2d(self.features, 1, self.stride, name="shortcut", **kw)(x)
            x = group_norm(self.features, self.groups, name="shortcut_norm", **kw)(x)
        return nn.relu(x + h)


def pool_grid(features: jax.Array, grid: int) -> jax.Array:
    """Average-pool a feature map [N, H, W, C] to [N, grid, grid, C] (H and W divisible by `grid`)."""
    n, height, width, channels = features.shape
    if height % grid or width % grid:
        raise ValueError(f"the trunk's {height}x{width} feature map does not divide into a {grid}x{grid} grid")
    return features.reshape(n, grid, height // grid, grid, width // grid, channels).mean(axis=(2, 4))


class FrameCNN(nn.Module):
    """Images [N, H, W, 3] -> feature maps [N, grid, grid, widths[-1]].

    A stride-2 3x3 stem, then one stage per entry of `widths` with `depths[i]` blocks; every stage
    after the first halves the resolution in its first block. The last map is average-pooled to
    `grid` x `grid` cells (1: one vector per image, which cannot tell left from right).
    """
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    groups: int = 8
    grid: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if len(self.widths) != len(self.depths):
            raise ValueError(f"widths {self.widths} and depths {self.depths} must have the same length")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv2d(self.stem_width, 3, 2, name="stem", **kw)(images.astype(self.dtype))
        x = nn.relu(group_norm(self.stem_width, self.groups, name="stem_norm", **kw)(x))
        for stage, (width, depth) in enumerate(zip(self.widths, self.depths)):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(width, stride, self.groups, name=f"stage{stage}_block{block}", **kw)(x)
        return pool_grid(x, self.grid)


class CNN2D(nn.Module):
    """Per-frame CNN, frames folded into the batch; one token per cell of each frame's `grid` x `grid`
    feature map, tagged with learned space and frame positions, then `temporal` modelling.

    temporal="mean": the tokens are the projected cells with their positions, and pooled is their
    average: a bag of frames in the pooled vector, while the tokens still say where and when each cell
    is, for a fusion that attends to them. temporal="transformer": a small transformer over every
    token of the clip (joint space-time attention); tokens are its outputs and pooled is their mean.
    frame_difference: a second trunk of the same shape sees each frame's change since the previous one
    and its cells join the appearance cells (TSN's two streams): motion gets its own features instead of
    sharing the appearance trunk's. `train` only switches the transformer's dropout on.
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"temporal": TEMPORAL_MODES}
    embed_dim: int = 256
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    groups: int = 8
    grid: int = 4
    frame_difference: bool = False
    temporal: str = "mean"
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    max_frames: int = 64
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def token_grid(self, video_shape: tuple[int, ...]) -> TokenGrid:
        """One token per frame and grid cell, time-major."""
        return TokenGrid(video_shape[1], self.grid, self.grid)

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        check_choices(self)
        if video.shape[1] > self.max_frames:
            raise ValueError(f"{video.shape[1]} frames exceed max_frames={self.max_frames}")
        batch, frames = video.shape[:2]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        def trunk(pixels: jax.Array, name: str) -> jax.Array:
            cnn = FrameCNN(self.stem_width, self.widths, self.depths, self.groups, self.grid, name=name, **kw)
            return cnn(pixels.reshape((batch * frames,) + pixels.shape[2:]))

        cells = trunk(video, "trunk")
        if self.frame_difference:  # TSN's RGB-difference stream, beside the appearance stream
            previous = jnp.concatenate([video[:, :1], video[:, :-1]], axis=1)
            cells = jnp.concatenate([cells, trunk(video - previous, "motion_trunk")], axis=-1)
        tokens = dense(self.embed_dim, ("conv_out", "embed"), name="project", **kw)(cells)
        init = logical(nn.initializers.normal(0.02), ("length", "embed"))
        space = self.param("space_positions", init, (self.grid * self.grid, self.embed_dim), self.param_dtype)
        time = self.param("frame_positions", init, (self.max_frames, self.embed_dim), self.param_dtype)
        tokens = (tokens.reshape(batch, frames, self.grid * self.grid, self.embed_dim)
                  + space.astype(self.dtype)[None, None] + time[:frames].astype(self.dtype)[None, :, None])
        tokens = constrain(tokens.reshape(batch, -1, self.embed_dim))
        if self.temporal == "transformer":
            tokens = Transformer(self.num_layers, self.num_heads, self.mlp_dim, dropout_rate=self.dropout,
                                 name="temporal", **kw)(tokens, deterministic=not train)
            tokens = layer_norm(name="norm", **kw)(tokens)
        return Encoded(tokens=tokens, pooled=tokens.mean(axis=1))
