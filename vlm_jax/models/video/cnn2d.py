"""Per-frame 2D CNN video encoder: a small ResNet applied to every frame, then temporal modelling.

The trunk (`FrameCNN`) uses GroupNorm rather than BatchNorm so the module keeps no batch statistics:
train and eval compute the same function and there is no mutable state to thread through the step.
`CNNRNN` (cnn_rnn.py) reuses the same trunk.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import (Dtype, Encoded, LearnedPositions, TokenGrid, Transformer, constrain, dense,
                                   layer_norm, logical)

TEMPORAL_MODES = ("mean", "transformer")

# Trunk shapes shared with cnn_rnn.py, sized for 64x64 frames.
TRUNK_SIZES = {
    "tiny": {"stem_width": 16, "widths": (16, 32), "depths": (1, 1), "groups": 4},
    "small": {"stem_width": 32, "widths": (32, 64, 128), "depths": (1, 1, 1), "groups": 8},
    "base": {"stem_width": 64, "widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2), "groups": 16},
}

SIZES = {
    "tiny": {**TRUNK_SIZES["tiny"], "embed_dim": 64, "temporal": "mean"},
    "small": {**TRUNK_SIZES["small"], "embed_dim": 256, "temporal": "transformer", "num_layers": 2, "num_heads": 4,
              "mlp_dim": 512},
    "base": {**TRUNK_SIZES["base"], "embed_dim": 512, "temporal": "transformer", "num_layers": 4, "num_heads": 8,
             "mlp_dim": 2048},
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


class FrameCNN(nn.Module):
    """Images [N, H, W, 3] -> spatially averaged features [N, widths[-1]].

    A stride-2 3x3 stem, then one stage per entry of `widths` with `depths[i]` blocks; every stage
    after the first halves the resolution in its first block.
    """
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    groups: int = 8
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
        return x.mean(axis=(1, 2))


class CNN2D(nn.Module):
    """Per-frame CNN, frames folded into the batch, then `temporal` modelling over the frame vectors.

    temporal="mean": tokens are the projected per-frame vectors and pooled is their average, so the
    encoding ignores frame order (a bag-of-frames baseline). temporal="transformer": learned frame
    positions and a small transformer over the frame vectors; tokens are its outputs and pooled is
    their mean. `train` only switches the transformer's dropout on.
    """
    embed_dim: int = 256
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    groups: int = 8
    temporal: str = "mean"
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    max_frames: int = 64
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def token_grid(self, video_shape: tuple[int, ...]) -> TokenGrid:
        """One token per frame; the trunk averages space away."""
        return TokenGrid(video_shape[1], 1, 1)

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        if self.temporal not in TEMPORAL_MODES:
            raise ValueError(f"unknown temporal mode {self.temporal!r}; choose one of {', '.join(TEMPORAL_MODES)}")
        batch, frames = video.shape[:2]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        trunk = FrameCNN(self.stem_width, self.widths, self.depths, self.groups, name="trunk", **kw)
        features = trunk(video.reshape((batch * frames,) + video.shape[2:]))
        tokens = dense(self.embed_dim, ("conv_out", "embed"), name="project", **kw)(features)
        tokens = constrain(tokens.reshape(batch, frames, self.embed_dim))
        if self.temporal == "transformer":
            if frames > self.max_frames:
                raise ValueError(f"{frames} frames exceed max_frames={self.max_frames}")
            tokens = LearnedPositions(self.max_frames, param_dtype=self.param_dtype, name="positions")(tokens)
            tokens = Transformer(self.num_layers, self.num_heads, self.mlp_dim, dropout_rate=self.dropout,
                                 name="temporal", **kw)(tokens, deterministic=not train)
            tokens = layer_norm(name="norm", **kw)(tokens)
        return Encoded(tokens=tokens, pooled=tokens.mean(axis=1))
