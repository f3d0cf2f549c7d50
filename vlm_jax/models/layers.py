"""Shared layers: attention on `jax.nn.dot_product_attention`, MLP, pre-LN transformer blocks, positions.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), which the config's rule
table maps onto the device mesh; activations are constrained with logical names where sharding
matters. `dtype` is the compute dtype and `param_dtype` the storage dtype everywhere.

Logical axes used: embed, mlp, heads, vocab, length, layers, conv_in, conv_out, audio_mel;
activations: activation_batch, activation_length, activation_embed.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ACTIVATION = ("activation_batch", "activation_length", "activation_embed")


class Encoded(NamedTuple):
    """What every encoder returns: a token sequence and one pooled vector per example."""
    tokens: jax.Array  # [B, N, D]
    pooled: jax.Array  # [B, D]
    mask: jax.Array | None = None  # [B, N] bool, True for real tokens; None when all are real


class TokenGrid(NamedTuple):
    """Where a video tower's output tokens lie in its input clip: a time-major (time, height, width) grid
    over the clip's frames `frames` ([start, stop); None: every frame). height = width = 1 when the tokens
    have no spatial layout (one token per time step). Explanations map token weights back to pixels by it."""
    time: int
    height: int
    width: int
    frames: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self.time * self.height * self.width


def logical(init: Callable, axes: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...] = ACTIVATION) -> jax.Array:
    """Pin an activation's sharding by logical names (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


def dense(features: int, axes: tuple[str | None, str | None], *, dtype: Dtype, param_dtype: Dtype,
          use_bias: bool = True, name: str | None = None,
          kernel_init: Callable = nn.initializers.xavier_uniform()) -> nn.Dense:
    """A Dense layer whose kernel and bias carry logical axis names."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=logical(kernel_init, axes), bias_init=logical(nn.initializers.zeros_init(), axes[1:]))


def layer_norm(*, dtype: Dtype, param_dtype: Dtype, epsilon: float = 1e-6, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=logical(nn.initializers.ones_init(), ("embed",)),
                        bias_init=logical(nn.initializers.zeros_init(), ("embed",)))


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of [B, L, D] over real tokens only (mask [B, L], None = all real); summed in float32 so bf16
    stays accurate, and a row without real tokens pools to zeros."""
    if mask is None:
        return x.astype(jnp.float32).mean(axis=1).astype(x.dtype)
    weights = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(x.dtype)


def key_padding_mask(valid: jax.Array | None) -> jax.Array | None:
    """[B, S] validity of keys -> boolean attention mask broadcastable to [B, heads, T, S]."""
    return None if valid is None else valid.astype(bool)[:, None, None, :]


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding of [B, T, heads, head_dim] at integer `positions` [T] (or [B, T])."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [.., T, half]
    if angles.ndim == 2:
        angles = angles[None]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    first, second = x[..., :half].astype(jnp.float32), x[..., half:2 * half].astype(jnp.float32)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return jnp.concatenate([rotated, x[..., 2 * half:].astype(jnp.float32)], axis=-1).astype(x.dtype)


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings added to [B, T, D]; T may be shorter than max_len."""
    max_len: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, offset: int | jax.Array = 0) -> jax.Array:
        table = self.param("embedding", logical(nn.initializers.normal(0.02), ("length", "embed")),
                           (self.max_len, x.shape[-1]), self.param_dtype)
        positions = jax.lax.dynamic_slice_in_dim(table, offset, x.shape[1], axis=0)
        return x + positions.astype(x.dtype)[None]


def attention_weights(query: jax.Array, key: jax.Array, mask: jax.Array | None = None,
                      causal: bool = False) -> jax.Array:
    """softmax(QK^T / sqrt(head_dim)) [B, heads, Lq, Lk] in float32, masked as `jax.nn.dot_product_attention`
    masks (which never exposes its probabilities): `mask` True where a query may attend, `causal` the
    top-left-aligned lower triangle; a row with no visible key spreads evenly, as there."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(query.shape[-1]))
    visible = jnp.ones(logits.shape, bool)
    if mask is not None:
        visible = visible & mask
    if causal:
        visible = visible & jnp.tril(jnp.ones(logits.shape[-2:], bool))
    return jax.nn.softmax(jnp.where(visible, logits, jnp.finfo(jnp.float32).min), axis=-1)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention to it.

    With `decode=True` the module keeps a KV cache (collection "cache"): initialise it with a
    full-length input, then feed one step at a time; each step attends to everything cached so far.

    When the "attention" collection is mutable (`apply(..., mutable=["attention"])`), the module also sows
    its attention probabilities [B, heads, Lq, Lk] as ("attention", "weights"), for explanations; otherwise
    it computes nothing extra.
    """
    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_rotary: bool = False
    decode: bool = False
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None,
                 causal: bool = False, deterministic: bool = True) -> jax.Array:
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"width {features} is not divisible by {self.num_heads} heads")
        head_dim = features // self.num_heads
        project = lambda name: dense(features, ("embed", "heads"), dtype=self.dtype, param_dtype=self.param_dtype,
                                     name=name)
        source = x if context is None else context
        split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, head_dim))
        query, key, value = split(project("query")(x)), split(project("key")(source)), split(project("value")(source))
        offset = 0
        if self.decode:
            key, value, mask, offset = self._update_cache(key, value, mask)
            causal = False  # the cache mask already hides the future
        if self.use_rotary:
            query = rotary(query, offset + jnp.arange(query.shape[1]))
            key = rotary(key, jnp.arange(key.shape[1]))
        # explanations ask for the probabilities; training, evaluation and init never pay for them
        if self.is_mutable_collection("attention") and not self.is_initializing():
            self.sow("attention", "weights", attention_weights(query, key, mask, causal))
        out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=causal)
        out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        out = out.reshape(out.shape[:2] + (features,))
        return dense(features, ("heads", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)

    def _update_cache(self, key, value, mask):
        initialised = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialised:  # the initialising call sizes the cache; it attends causally over its input
            causal = jnp.tril(jnp.ones((key.shape[1], key.shape[1]), bool))[None, None]
            return key, value, causal if mask is None else mask & causal, 0
        step, length = index.value, key.shape[1]
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                                        (0, step, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value,
                                                          value.astype(cached_value.value.dtype), (0, step, 0, 0))
        index.value = step + length
        max_len = cached_key.value.shape[1]
        query_positions = step + jnp.arange(length)
        visible = (jnp.arange(max_len)[None, :] <= query_positions[:, None])[None, None]
        return cached_key.value, cached_value.value, visible if mask is None else mask & visible, step


class Mlp(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    activation: Callable = nn.gelu

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        features = x.shape[-1]
        h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
        h = constrain(self.activation(h), ("activation_batch", "activation_length", "activation_mlp"))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(features, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)


class TransformerBlock(nn.Module):
    """Pre-LN block: self-attention, optional cross-attention to a context, MLP; residual around each."""
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    cross_attention: bool = False
    causal: bool = False
    use_rotary: bool = False
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, context: jax.Array | None = None,
                 context_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = layer_norm(name="norm_attention", **kw)(x)
        h = Attention(self.num_heads, use_rotary=self.use_rotary, decode=self.decode, name="attention", **kw)(
            h, mask=key_padding_mask(mask), causal=self.causal, deterministic=deterministic)
        x = x + drop(h)
        if self.cross_attention:
            h = layer_norm(name="norm_cross", **kw)(x)
            h = Attention(self.num_heads, name="cross_attention", **kw)(
                h, context=context, mask=key_padding_mask(context_mask), deterministic=deterministic)
            x = x + drop(h)
        h = layer_norm(name="norm_mlp", **kw)(x)
        x = x + drop(Mlp(self.mlp_dim, dropout_rate=self.dropout_rate, name="mlp", **kw)(h, deterministic))
        return constrain(x)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def stack_layers(block: Any, block_kwargs: dict, num_layers: int, x: jax.Array, *args, remat: str = "none",
                 scan: bool = False) -> jax.Array:
    """`num_layers` copies of `block`, optionally rematerialised and scanned (one compiled layer).

    Call it inside an `@nn.compact` method: the layers become that module's children (`layer_{i}`, or
    `layers` with a leading "layers" parameter axis when scanned). Each layer runs as
    `block(**block_kwargs)(x, *args)`; the last of `args` must be the `deterministic` flag.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose one of {', '.join(REMAT_POLICIES)}")
    if remat != "none":  # argnum 0 is the module itself, so `deterministic` is len(args) + 1
        block = nn.remat(block, policy=REMAT_POLICIES[remat], static_argnums=(len(args) + 1,))
    if scan:
        # captured attention weights stack along the layer axis too (scan would drop them without an axis)
        scanned = nn.scan(
            _ScanStep, variable_axes={"params": 0, "cache": 0, "attention": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args), length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(block=block, block_kwargs=block_kwargs, name="layers")(x, *args)
        return x
    for i in range(num_layers):
        x = block(name=f"layer_{i}", **block_kwargs)(x, *args)
    return x


class _ScanStep(nn.Module):
    """One layer in the form nn.scan wants: (carry, *broadcast) -> (carry, None)."""
    block: Any
    block_kwargs: dict

    @nn.compact
    def __call__(self, x, *args):
        return self.block(name="block", **self.block_kwargs)(x, *args), None


class Transformer(nn.Module):
    """`num_layers` TransformerBlocks (see `stack_layers` for remat and scan)."""
    num_layers: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    cross_attention: bool = False
    causal: bool = False
    use_rotary: bool = False
    decode: bool = False
    remat: str = "none"
    scan: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, context: jax.Array | None = None,
                 context_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                  dropout_rate=self.dropout_rate, cross_attention=self.cross_attention, causal=self.causal,
                  use_rotary=self.use_rotary, decode=self.decode)
        return stack_layers(TransformerBlock, kw, self.num_layers, x, mask, context, context_mask, deterministic,
                            remat=self.remat, scan=self.scan)
