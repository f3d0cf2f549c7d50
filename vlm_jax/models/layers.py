"""Shared layers: attention (`attend`), MLP, pre-LN transformer blocks, positions.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), which the config's rule
table maps onto the device mesh; activations are constrained with logical names where sharding
matters. `dtype` is the compute dtype and `param_dtype` the storage dtype everywhere.

Logical axes used: embed, mlp, heads, vocab, length, layers, conv_in, conv_out, audio_mel;
activations: activation_batch, activation_length, activation_embed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
ACTIVATION = ("activation_batch", "activation_length", "activation_embed")


class Encoded(NamedTuple):
    """What every encoder returns: a token sequence and one pooled vector per example."""
    tokens: jax.Array  # [B, N, D]
    pooled: jax.Array  # [B, D]
    mask: jax.Array | None = None  # [B, N] bool, True for real tokens; None when all are real


def repeat_encoded(encoded: Encoded | None, times: int) -> Encoded | None:
    """Each example's encoding `times` times in a row (one per beam, caption or question)."""
    if encoded is None or times == 1:
        return encoded
    return Encoded(*(None if x is None else jnp.repeat(x, times, axis=0) for x in encoded))


def take_rows(encoded: Encoded, rows: jax.Array) -> Encoded:
    """Examples `rows` of every field (a gather across the batch)."""
    return Encoded(*(None if x is None else jnp.take(x, rows, axis=0) for x in encoded))


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


def to_unit_range(video: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
    """uint8 frames [0, 255] -> [-1, 1] in `dtype`, the range every video encoder takes; float video is
    taken to be in [-1, 1] already."""
    video = jnp.asarray(video)
    if video.dtype == jnp.uint8:
        return video.astype(dtype) * (2.0 / 255.0) - 1.0
    return video.astype(dtype)


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


# Scores one group of examples may hold on CPU: a few MB, so they stay in cache between the passes.
ATTENTION_GROUP_BYTES = 8 * 2**20


def attend(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None,
           causal: bool = False) -> jax.Array:
    """softmax(QK^T / sqrt(head_dim)) V for [B, L, heads, head_dim] inputs, with the masking of
    `jax.nn.dot_product_attention` (which it calls off the CPU).

    On the CPU, XLA materialises the [B, heads, Lq, Lk] scores for the whole batch and passes over them
    several times from memory; here they are computed a group of examples at a time (`lax.map`), and the
    backward pass recomputes them from the saved row maxima and sums instead of storing the probabilities (as
    FlashAttention does). That keeps each group's scores in cache and the saved activations at O(L).
    Scores and softmax are float32; the probabilities meet `value` in its dtype.
    """
    if jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=causal)
    batch, length_q, heads, _ = query.shape
    length_k = key.shape[1]
    visible = jnp.ones((1, 1, length_q, length_k), bool) if mask is None else mask
    if causal:
        visible = visible & jnp.tril(jnp.ones((length_q, length_k), bool))
    visible = jnp.broadcast_to(visible, (batch, visible.shape[1], length_q, length_k))
    per_example = heads * length_q * length_k * 4
    group = max(d for d in range(1, batch + 1)
                if batch % d == 0 and (d == 1 or d * per_example <= ATTENTION_GROUP_BYTES))
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [B, heads, L, head_dim]: the dots batch over leading axes
    out = _grouped_attention(heads_first(query), heads_first(key), heads_first(value), visible, group)
    return heads_first(out)


def _scores(query, key, visible):
    """Masked float32 scores [B, heads, Lq, Lk]; a row with no visible key is uniform, as in jax.nn."""
    scale = jnp.float32(query.shape[-1]) ** -0.5
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32) * scale
    return jnp.where(visible, logits, jnp.finfo(jnp.float32).min)


def _attention_forward(query, key, value, visible):
    scores = _scores(query, key, visible)
    peak = scores.max(axis=-1, keepdims=True)
    exp = jnp.exp(scores - peak)
    total = exp.sum(axis=-1, keepdims=True)
    out = jnp.einsum("bhqk,bhkd->bhqd", (exp / total).astype(value.dtype), value)
    return out, (peak[..., 0], total[..., 0])


def _attention_backward(query, key, value, visible, out, softmax_stats, d_out):
    peak, total = softmax_stats  # kept apart: peak + log(total) would lose log(total) next to float32 min
    probabilities = jnp.exp(_scores(query, key, visible) - peak[..., None]) / total[..., None]
    d_value = jnp.einsum("bhqk,bhqd->bhkd", probabilities.astype(d_out.dtype), d_out)
    d_probabilities = jnp.einsum("bhqd,bhkd->bhqk", d_out, value, preferred_element_type=jnp.float32)
    row = jnp.einsum("bhqd,bhqd->bhq", d_out, out, preferred_element_type=jnp.float32)[..., None]
    d_scores = jnp.where(visible, probabilities * (d_probabilities - row), 0.0)
    d_scores = d_scores * jnp.float32(query.shape[-1]) ** -0.5
    d_query = jnp.einsum("bhqk,bhkd->bhqd", d_scores.astype(key.dtype), key)
    d_key = jnp.einsum("bhqk,bhqd->bhkd", d_scores.astype(query.dtype), query)
    return d_query, d_key, d_value


def _in_groups(fn, group, *arrays):
    """fn over the batch `group` examples at a time; groups take every (B / group)-th example, so a batch
    sharded over devices stays sharded inside each group."""
    count = arrays[0].shape[0] // group
    if count == 1:
        return fn(*arrays)
    split = lambda x: jnp.moveaxis(x.reshape(group, count, *x.shape[1:]), 1, 0)
    outputs = jax.lax.map(lambda xs: fn(*xs), jax.tree.map(split, arrays))
    return jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1).reshape(-1, *y.shape[2:]), outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _grouped_attention(query, key, value, visible, group):
    return _in_groups(_attention_forward, group, query, key, value, visible)[0]


def _grouped_attention_fwd(query, key, value, visible, group):
    out, softmax_stats = _in_groups(_attention_forward, group, query, key, value, visible)
    return out, (query, key, value, visible, out, softmax_stats)


def _grouped_attention_bwd(group, residuals, d_out):
    d_query, d_key, d_value = _in_groups(_attention_backward, group, *residuals, d_out)
    visible = residuals[3]
    return d_query, d_key, d_value, np.zeros(visible.shape, jax.dtypes.float0)


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention to it.

    With `decode=True` the module keeps a KV cache (collection "cache"): initialise it with a
    full-length input, then feed one step at a time; each step attends to everything cached so far.

    When the "attention" collection is mutable (`apply(..., mutable=["attention"])`), the module also sows
    its attention probabilities [B, heads, Lq, Lk] as ("attention", "weights"), for explanations; otherwise
    it computes nothing extra.

    `context_rows` [B] (cross-attention only): row i of x attends to context row `context_rows[i]`. Keys and
    values are then projected once per distinct context row and taken for each query row, which is what
    makes many texts meeting the same clips cheap (pretraining's matching and MLM pairs).
    """
    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_rotary: bool = False
    decode: bool = False
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None,
                 causal: bool = False, deterministic: bool = True, context_rows: jax.Array | None = None) -> jax.Array:
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"width {features} is not divisible by {self.num_heads} heads")
        head_dim = features // self.num_heads
        project = lambda name: dense(features, ("embed", "heads"), dtype=self.dtype, param_dtype=self.param_dtype,
                                     name=name)
        source = x if context is None else context
        split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, head_dim))
        query, key, value = split(project("query")(x)), split(project("key")(source)), split(project("value")(source))
        if context_rows is not None:
            key, value = jnp.take(key, context_rows, axis=0), jnp.take(value, context_rows, axis=0)
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
        out = attend(query, key, value, mask=mask, causal=causal)
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
    """Pre-LN block: self-attention, optional cross-attention to a context, MLP; residual around each.

    The context may have fewer rows than x: k rows of x per context row, in order (row r of x belongs to
    context row r // k), as when each clip meets several of its questions. With `context_rows` [G], x holds
    k rows per entry and entry g meets context row `context_rows[g]` (see `Attention`)."""
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
                 context_mask: jax.Array | None = None, context_rows: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = layer_norm(name="norm_attention", **kw)(x)
        h = Attention(self.num_heads, use_rotary=self.use_rotary, decode=self.decode, name="attention", **kw)(
            h, mask=key_padding_mask(mask), causal=self.causal, deterministic=deterministic)
        x = x + drop(h)
        if self.cross_attention:
            # k rows of x per context row (several texts of one clip, clip-major): the k rows' tokens query
            # their shared context together, so its keys and values are computed once, not k times
            h = layer_norm(name="norm_cross", **kw)(x)
            if context_rows is not None and context_mask is not None:
                context_mask = jnp.take(context_mask, context_rows, axis=0)
            grouped = h.reshape((context if context_rows is None else context_rows).shape[0], -1, h.shape[-1])
            h = Attention(self.num_heads, name="cross_attention", **kw)(
                grouped, context=context, mask=key_padding_mask(context_mask), deterministic=deterministic,
                context_rows=context_rows)
            x = x + drop(h.reshape(x.shape))
        h = layer_norm(name="norm_mlp", **kw)(x)
        x = x + drop(Mlp(self.mlp_dim, dropout_rate=self.dropout_rate, name="mlp", **kw)(h, deterministic))
        return constrain(x)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def field_choices(module: type[nn.Module]) -> dict[str, tuple]:
    """A module class's fields that take one of a fixed set of values: its `CHOICES`, and `remat` wherever
    it has one. Config validation reads them to name a bad key before anything is traced."""
    has_remat = any(field.name == "remat" for field in dataclasses.fields(module))
    return {**getattr(module, "CHOICES", {}), **({"remat": tuple(REMAT_POLICIES)} if has_remat else {})}


def check_choices(module: nn.Module) -> None:
    """ValueError for a field of `module` outside its `field_choices`."""
    for field, allowed in field_choices(type(module)).items():
        value = getattr(module, field)
        if value not in allowed:
            raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(map(str, allowed))}")


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
                 context_mask: jax.Array | None = None, context_rows: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                  dropout_rate=self.dropout_rate, cross_attention=self.cross_attention, causal=self.causal,
                  use_rotary=self.use_rotary, decode=self.decode)
        return stack_layers(TransformerBlock, kw, self.num_layers, x, mask, context, context_mask, context_rows,
                            deterministic, remat=self.remat, scan=self.scan)
