"""ViViT video encoders (Arnab et al., 2021): joint, factorised-encoder and factorised-self-attention variants.

The stem cuts the video into non-overlapping tubelets and projects each one; its kernel is stored in
Conv3D layout [t, h, w, in, out] (Hugging Face `VivitModel` torch weight [out, in, t, h, w] transposed)
but applied as one matmul over `patchify`'s output, which is faster than a strided conv on XLA CPU and
lets masked-video-modelling targets share exactly the same token order.

Token order everywhere is time-major then row then column: flat index = (i * H' + j) * W' + k for the
tubelet at grid position (i, j, k).

Token masking (VideoMAE / UMT style, `train=True` and `mask_ratio > 0`) keeps a random subset of tubelets,
drawn per example from the "masking" rng stream, and encodes only those. The kept flat indices [B, K]
(ascending) are sown as ("intermediates", "kept_tubelets"). How each variant keeps its shapes:
  joint                      K = round((1 - ratio) * N) tubelets anywhere in the video;
  factorised_encoder         round((1 - ratio) * S) spatial tubelets per time slice, drawn independently per
                             slice (S = H' * W'), so K = T' * that;
  factorised_self_attention  tube masking: the same round((1 - ratio) * S) spatial positions in every time
                             slice, so temporal attention still runs across time at each kept position.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.layers import Encoded

VARIANTS = ("joint", "factorised_encoder", "factorised_self_attention")
POOLS = ("cls", "mean")

SIZES = {
    "tiny": dict(width=64, depth=2, temporal_depth=1, num_heads=2, mlp_dim=256, tubelet=(2, 8, 8)),
    "small": dict(width=192, depth=4, temporal_depth=2, num_heads=3, mlp_dim=768, tubelet=(2, 8, 8)),
    "base": dict(width=384, depth=6, temporal_depth=2, num_heads=6, mlp_dim=1536, tubelet=(2, 8, 8)),
}


def tubelet_grid(video_shape: tuple[int, ...], tubelet: tuple[int, int, int]) -> tuple[int, int, int]:
    """Number of tubelets along (time, height, width) for a [B, T, H, W, C] video."""
    *_, frames, height, width, _ = video_shape
    if len(tubelet) != 3:
        raise ValueError(f"tubelet must be (t, h, w), got {tubelet}")
    sizes = (frames, height, width)
    if any(size % step for size, step in zip(sizes, tubelet)):
        raise ValueError(f"video (T, H, W) = {sizes} is not divisible by tubelet {tuple(tubelet)}")
    return tuple(size // step for size, step in zip(sizes, tubelet))


def patchify(video: jax.Array, tubelet: tuple[int, int, int]) -> jax.Array:
    """[B, T, H, W, C] -> [B, N, t*h*w*C]: tubelet pixels in token order, each flattened as (t, h, w, C)."""
    grid_t, grid_h, grid_w = tubelet_grid(video.shape, tubelet)
    step_t, step_h, step_w = tubelet
    batch, channels = video.shape[0], video.shape[-1]
    x = video.reshape(batch, grid_t, step_t, grid_h, step_h, grid_w, step_w, channels)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(batch, grid_t * grid_h * grid_w, step_t * step_h * step_w * channels)


def random_keep(rng: jax.Array, batch: int, groups: int, size: int, keep: int) -> jax.Array:
    """Per example and group, `keep` distinct random indices out of `size`, ascending: [batch, groups, keep]."""
    noise = jax.random.uniform(rng, (batch, groups, size))
    return jnp.sort(jnp.argsort(noise, axis=-1)[..., :keep], axis=-1).astype(jnp.int32)


def gather_tokens(tokens: jax.Array, indices: jax.Array) -> jax.Array:
    """tokens [B, N, D] at per-example indices [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(tokens, indices[..., None], axis=1)


class TubeletEmbedding(nn.Module):
    """Linear projection of each tubelet; parameters in Conv3D layout so checkpoints map one to one."""
    width: int
    tubelet: tuple[int, int, int]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array) -> jax.Array:
        channels = video.shape[-1]
        kernel = self.param("kernel", layers.logical(nn.initializers.lecun_normal(), (
            None, None, None, "conv_in", "embed")),
            (*self.tubelet, channels, self.width), self.param_dtype)
        bias = self.param("bias", layers.logical(nn.initializers.zeros_init(), ("embed",)), (self.width,),
                          self.param_dtype)
        patches, kernel, bias = nn.dtypes.promote_dtype(patchify(video, self.tubelet), kernel, bias,
                                                        dtype=self.dtype)
        return layers.constrain(patches @ kernel.reshape(-1, self.width) + bias)


class FactorisedBlock(nn.Module):
    """Pre-LN block: spatial attention within each time slice, temporal attention across slices, then MLP.

    Tokens are [B, (1 +) T' * S, D] in time-major order. A leading CLS token (TimeSformer's divided
    space-time scheme) joins every slice's spatial attention, its per-slice outputs averaged, and skips
    temporal attention.
    """
    num_frames: int
    has_cls: bool
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        attend = lambda name, h: layers.Attention(self.num_heads, name=name, **kw)(h, deterministic=deterministic)
        batch, width, frames = x.shape[0], x.shape[-1], self.num_frames
        start = int(self.has_cls)

        h = layers.layer_norm(name="norm_spatial", **kw)(x)
        slices = h[:, start:].reshape(batch * frames, -1, width)
        if self.has_cls:
            cls = jnp.broadcast_to(h[:, :1, None], (batch, frames, 1, width)).reshape(batch * frames, 1, width)
            slices = jnp.concatenate([cls, slices], axis=1)
        out = attend("spatial_attention", layers.constrain(slices))
        spatial = out[:, start:].reshape(batch, -1, width)
        if self.has_cls:
            cls_out = out[:, 0].reshape(batch, frames, width).mean(axis=1, keepdims=True)
            spatial = jnp.concatenate([cls_out, spatial], axis=1)
        x = x + drop(spatial)

        h = layers.layer_norm(name="norm_temporal", **kw)(x[:, start:])
        spots = h.shape[1] // frames
        tubes = h.reshape(batch, frames, spots, width).transpose(0, 2, 1, 3).reshape(batch * spots, frames, width)
        out = attend("temporal_attention", layers.constrain(tubes))
        temporal = out.reshape(batch, spots, frames, width).transpose(0, 2, 1, 3).reshape(batch, -1, width)
        x = jnp.concatenate([x[:, :start], x[:, start:] + drop(temporal)], axis=1)

        h = layers.layer_norm(name="norm_mlp", **kw)(x)
        x = x + drop(layers.Mlp(self.mlp_dim, dropout_rate=self.dropout_rate, name="mlp", **kw)(h, deterministic))
        return layers.constrain(x)


class FactorisedTransformer(nn.Module):
    """`num_layers` FactorisedBlocks (see `layers.stack_layers` for remat and scan)."""
    num_layers: int
    block_kwargs: dict
    remat: str = "none"
    scan: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        return layers.stack_layers(FactorisedBlock, self.block_kwargs, self.num_layers, x, deterministic,
                                   remat=self.remat, scan=self.scan)


class ViViT(nn.Module):
    """Video Vision Transformer; `variant` picks how space-time attention is arranged.

    Returns `Encoded(tokens, pooled)`:
      joint, factorised_self_attention  tokens = every (kept) tubelet token [B, N, width], CLS excluded;
      factorised_encoder                tokens = the temporal encoder's per-slice tokens [B, T', width].
    All tokens pass the final LayerNorm; `pooled` is the CLS token (pool="cls") or the token mean.

    Parameter names of the joint variant map one to one onto Hugging Face `VivitModel`: cls_token,
    position_embedding [1 + N, width], tubelet_embedding/{kernel, bias},
    transformer/layer_i/{norm_attention, attention/{query, key, value, out}, norm_mlp, mlp/{fc1, fc2}}, norm
    (HF adds leading singleton axes to cls_token and position_embeddings; its tanh pooler has no counterpart).
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"variant": VARIANTS, "pool": POOLS}
    variant: str = "joint"
    width: int = 64
    depth: int = 2
    temporal_depth: int = 1
    num_heads: int = 2
    mlp_dim: int = 256
    tubelet: tuple[int, int, int] = (2, 8, 8)
    pool: str = "cls"
    mask_ratio: float = 0.0
    dropout: float = 0.0
    remat: str = "none"
    scan: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def tubelet_grid(self, video_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Tubelets along (time, height, width) that this model cuts a [B, T, H, W, 3] video into."""
        return tubelet_grid(video_shape, tuple(self.tubelet))

    def token_grid(self, video_shape: tuple[int, ...]) -> layers.TokenGrid:
        """Where the output tokens lie: the tubelet grid, or one token per time slice (factorised_encoder)."""
        grid_t, grid_h, grid_w = self.tubelet_grid(video_shape)
        if self.variant == "factorised_encoder":
            return layers.TokenGrid(grid_t, 1, 1)
        return layers.TokenGrid(grid_t, grid_h, grid_w)

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        self._validate()
        grid_t, grid_h, grid_w = self.tubelet_grid(video.shape)
        spots, factorised_encoder = grid_h * grid_w, self.variant == "factorised_encoder"
        deterministic = not train
        tokens = TubeletEmbedding(self.width, tuple(self.tubelet), self.dtype, self.param_dtype,
                                  name="tubelet_embedding")(video)
        if factorised_encoder:  # one spatial table, shared by every time slice
            table = self._position_table("spatial_position_embedding", spots)
            tokens = tokens + jnp.tile(table[self._num_cls:], (grid_t, 1))
        else:
            table = self._position_table("position_embedding", grid_t * spots)
            tokens = tokens + table[self._num_cls:]
        if train and self.mask_ratio > 0:
            kept = self._draw_kept(tokens.shape[0], grid_t, spots)
            self.sow("intermediates", "kept_tubelets", kept)
            tokens = layers.constrain(gather_tokens(tokens, kept))

        if factorised_encoder:
            return self._factorised_encoder(tokens, table, grid_t, deterministic)
        x = self._embed_input("cls_token", tokens, table, deterministic)
        if self.variant == "joint":
            transformer = self._transformer("transformer", self.depth)
        else:
            block_kwargs = dict(num_frames=grid_t, has_cls=bool(self._num_cls), num_heads=self.num_heads,
                                mlp_dim=self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                                dropout_rate=self.dropout)
            transformer = FactorisedTransformer(self.depth, block_kwargs, remat=self.remat, scan=self.scan,
                                                name="transformer")
        return self._pooled(self._norm("norm", transformer(x, deterministic=deterministic)))

    def _factorised_encoder(self, tokens: jax.Array, spatial_table: jax.Array, grid_t: int,
                            deterministic: bool) -> Encoded:
        """A spatial transformer over each time slice's tokens, then a temporal one over the slice summaries."""
        batch = tokens.shape[0]
        slices = self._embed_input("spatial_cls_token", tokens.reshape(batch * grid_t, -1, self.width),
                                   spatial_table, deterministic)
        slices = self._transformer("spatial_transformer", self.depth)(slices, deterministic=deterministic)
        frames = self._pool(self._norm("spatial_norm", slices)).reshape(batch, grid_t, self.width)
        table = self._position_table("temporal_position_embedding", grid_t)
        frames = self._embed_input("temporal_cls_token", frames + table[self._num_cls:], table, deterministic)
        frames = self._transformer("temporal_transformer", self.temporal_depth)(frames, deterministic=deterministic)
        return self._pooled(self._norm("temporal_norm", frames))

    @property
    def _num_cls(self) -> int:
        return int(self.pool == "cls")

    def _position_table(self, name: str, length: int) -> jax.Array:
        """A learned table of `length` rows, plus a leading CLS row when pooling by CLS (HF layout)."""
        table = self.param(name, layers.logical(nn.initializers.normal(0.02), ("length", "embed")),
                           (self._num_cls + length, self.width), self.param_dtype)
        return table.astype(self.dtype)

    def _draw_kept(self, batch: int, grid_t: int, spots: int) -> jax.Array:
        """Flat indices [B, K] of the tubelets to encode, ascending; see the module docstring per variant."""
        rng = self.make_rng("masking")
        keep = lambda size: max(1, round((1 - self.mask_ratio) * size))
        if self.variant == "joint":
            return random_keep(rng, batch, 1, grid_t * spots, keep(grid_t * spots))[:, 0]
        groups = grid_t if self.variant == "factorised_encoder" else 1
        in_slice = random_keep(rng, batch, groups, spots, keep(spots))
        return (jnp.arange(grid_t)[None, :, None] * spots + in_slice).reshape(batch, -1)

    def _embed_input(self, cls_name: str, tokens: jax.Array, table: jax.Array, deterministic: bool) -> jax.Array:
        """Prepend the CLS token (plus its position row) when pooling by CLS, then embedding dropout."""
        if self._num_cls:
            cls = self.param(cls_name, layers.logical(nn.initializers.zeros_init(), ("embed",)), (self.width,),
                             self.param_dtype).astype(self.dtype) + table[0]
            tokens = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width)), tokens], axis=1)
        return nn.Dropout(self.dropout)(layers.constrain(tokens), deterministic=deterministic)

    def _transformer(self, name: str, depth: int) -> layers.Transformer:
        return layers.Transformer(depth, self.num_heads, self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                                  dropout_rate=self.dropout, remat=self.remat, scan=self.scan, name=name)

    def _norm(self, name: str, x: jax.Array) -> jax.Array:
        return layers.layer_norm(name=name, dtype=self.dtype, param_dtype=self.param_dtype)(x)

    def _pool(self, x: jax.Array) -> jax.Array:
        return x[:, 0] if self._num_cls else x.mean(axis=1)

    def _pooled(self, x: jax.Array) -> Encoded:
        return Encoded(tokens=layers.constrain(x[:, self._num_cls:]), pooled=self._pool(x))

    def _validate(self) -> None:
        layers.check_choices(self)
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
