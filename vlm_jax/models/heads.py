"""Task heads on top of the towers and the fusion: contrastive, video-text matching (VTM), masked language
modelling (MLM), masked video modelling (MVM), captioning and question answering.

Heads are encoder-agnostic: they read `Encoded` / `Fused` values and arrays, never a specific tower.
Losses that belong to one head only (`mvm_loss`) and pure scoring helpers (`choice_logits`) live here too.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.fusion import concat_tokens
from vlm_jax.models.layers import Dtype, Encoded, Transformer, constrain, dense, layer_norm, logical


def l2_normalize(x: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    """x / |x| in float32, so similarities stay accurate under bf16 compute."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), epsilon))


class ContrastiveHead(nn.Module):
    """CLIP-style projections of pooled video and text into one unit-norm space, with a learned scale.

    The scale is stored as a log (init log(1/temperature)) and clipped at `max_scale` when used, as CLIP
    does, so it cannot grow until the softmax saturates. `__call__` returns float32 (video_emb, text_emb,
    scale); `embed_video` / `embed_text` project one side alone (search indexes and queries).

    With `use_audio`, the clip's embedding is the normalised sum of the video projection and a separate
    `audio_projection` of the pooled audio, so a caption that names a sound can match on it. The sum equals
    one projection of the concatenated vectors, but keeps `video_projection` as a video-only head has it; and
    `audio_projection` starts at zero, so the embedding starts as the video-only one and the audio weighs in
    only as far as training finds it useful (captions that do not name a sound stay matched on the video).
    """
    embed_dim: int = 256
    temperature: float = 0.07
    max_scale: float = 100.0
    use_audio: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
        self.video_projection = dense(self.embed_dim, ("mlp", "embed"), **kw)
        if self.use_audio:
            self.audio_projection = dense(self.embed_dim, ("mlp", "embed"), kernel_init=nn.initializers.zeros_init(),
                                          **kw)
        self.text_projection = dense(self.embed_dim, ("mlp", "embed"), **kw)
        self.log_scale = self.param("log_scale", logical(nn.initializers.constant(math.log(1 / self.temperature)),
                                                         ()), (), self.param_dtype)

    def embed_video(self, video_pooled: jax.Array, audio_pooled: jax.Array | None = None) -> jax.Array:
        """The clip's unit-norm embedding; `audio_pooled` is required with `use_audio` and ignored without."""
        projected = self.video_projection(video_pooled)
        if self.use_audio:
            if audio_pooled is None:
                raise ValueError("this contrastive head embeds the audio too (model.retrieval_audio); pass the "
                                 "encoded audio")
            projected = projected + self.audio_projection(audio_pooled)
        return l2_normalize(projected)

    def embed_text(self, text_pooled: jax.Array) -> jax.Array:
        return l2_normalize(self.text_projection(text_pooled))

    def __call__(self, video_pooled: jax.Array, text_pooled: jax.Array,
                 audio_pooled: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        scale = jnp.exp(jnp.minimum(self.log_scale.astype(jnp.float32), math.log(self.max_scale)))
        return self.embed_video(video_pooled, audio_pooled), self.embed_text(text_pooled), scale


class MatchingHead(nn.Module):
    """Video-text matching: one float32 logit per example from the fused pooled vector ([B, D] -> [B])."""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        logit = dense(1, ("embed", None), dtype=self.dtype, param_dtype=self.param_dtype, name="logit")(pooled)
        return logit[..., 0].astype(jnp.float32)


class MlmHead(nn.Module):
    """BERT's MLM head: transform (Dense + exact GELU + LayerNorm), then logits tied to the text tower's
    word-embedding table [V, D_text] plus a learned bias [V].

    The transform Dense maps the fused width straight to D_text, so no separate projection is needed when the
    widths differ. `hidden` may be all positions [B, L, W] or only the masked ones [B, M, W]. Logits are in
    the compute dtype; the loss should upcast.
    """
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, embedding_table: jax.Array) -> jax.Array:
        vocab_size, text_width = embedding_table.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(text_width, ("mlp", "embed"), name="transform", **kw)(hidden)
        h = layer_norm(name="norm", **kw)(nn.gelu(h, approximate=False))
        bias = self.param("bias", logical(nn.initializers.zeros_init(), ("vocab",)), (vocab_size,), self.param_dtype)
        logits = jnp.einsum("...d,vd->...v", h, embedding_table.astype(self.dtype))
        return logits + bias.astype(self.dtype)


class MvmHead(nn.Module):
    """Masked video modelling, independent of the video tower.

    One learned query per target position (a table of `num_positions`, the size of the tubelet grid) runs
    through a small transformer that cross-attends to the video tokens, then a Dense predicts each masked
    tubelet's `target_dim` values (e.g. its t*h*w*3 pixels). The video tower decides what the tokens are
    (typically only the visible tubelets); the head only needs them and their mask.
    """
    width: int = 256
    depth: int = 1
    num_heads: int = 4
    mlp_dim: int = 1024
    target_dim: int = 1536
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: Encoded, target_positions: jax.Array, num_positions: int,
                 target_mask: jax.Array | None = None) -> jax.Array:
        """video: tokens [B, N, D] + mask; target_positions [B, M] grid indices; target_mask [B, M] marks
        real targets when M is padded (padded positions may hold any index). Returns [B, M, target_dim]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        context = dense(self.width, ("mlp", "embed"), name="video_projection", **kw)(video.tokens)
        table = self.param("position_queries", logical(nn.initializers.normal(0.02), ("length", "embed")),
                           (num_positions, self.width), self.param_dtype)
        # clip: padded targets may hold any index (e.g. -1) and must not turn into NaN queries
        queries = constrain(jnp.take(table, target_positions, axis=0, mode="clip").astype(self.dtype))
        h = Transformer(num_layers=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, cross_attention=True,
                        name="transformer", **kw)(queries, target_mask, context, video.mask)
        h = layer_norm(name="norm", **kw)(h)
        return dense(self.target_dim, ("embed", "mlp"), name="predict", **kw)(h)


def normalize_patches(target: jax.Array, epsilon: float = 1e-6) -> jax.Array:
    """Each patch's values [..., P] to zero mean and unit variance, as VideoMAE's default target.

    Normalising per patch makes the loss about local structure (edges, motion) rather than absolute
    brightness, which VideoMAE found gives better representations.
    """
    target = target.astype(jnp.float32)
    mean = target.mean(axis=-1, keepdims=True)
    variance = target.var(axis=-1, keepdims=True)
    return (target - mean) * jax.lax.rsqrt(variance + epsilon)


def mvm_loss(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean squared error between `pred` [B, M, P] and the per-patch normalised `target` [B, M, P], averaged
    over the masked positions that `weights` [B, M] selects (all of them when None)."""
    per_position = jnp.mean(jnp.square(pred.astype(jnp.float32) - normalize_patches(target)), axis=-1)
    if weights is None:
        return per_position.mean()
    weights = weights.astype(jnp.float32)
    return jnp.sum(per_position * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class _CachedDecoder(nn.Module):
    """The fields every caption decoder has, and what generation needs from one: `decode=True` steps one
    token per call on a cache."""
    vocab_size: int = 30522
    width: int = 256
    decode: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def init_cache(self, params, video: Encoded, audio: Encoded | None = None, *, max_len: int):
        """An empty decoding cache (KV and position) for `max_len` steps, for the batch of `video`.

        The cache is sized by a first call on a full-length input (see layers.Attention); only its shapes are
        traced here, so nothing is computed.
        """
        decoder = self.clone(decode=True, parent=None)
        tokens = jnp.zeros((video.tokens.shape[0], max_len), jnp.int32)
        shapes = jax.eval_shape(
            lambda: decoder.apply({"params": params}, tokens, video, audio, mutable=["cache"])[1]["cache"])
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


class CaptionDecoder(_CachedDecoder):
    """Autoregressive caption decoder: causal self-attention with rotary positions, cross-attention to the
    video (+ audio) tokens, logits tied to its own token embedding.

    Build it twice with the same params: `decode=False` for teacher-forced training on [B, T] tokens
    (right-padded; causality keeps padding out of real positions), `decode=True` for generation one token
    per call with a KV cache:

        decoder = CaptionDecoder(..., decode=True)
        cache = decoder.init_cache(params, video, max_len=T)
        # each step: one token [B, 1] in, logits [B, 1, V] out
        logits, mutated = decoder.apply({"params": params, "cache": cache}, token, video, mutable=["cache"])
        cache = mutated["cache"]
    """
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 1024
    dropout: float = 0.0
    remat: str = "none"

    @nn.compact
    def __call__(self, tokens: jax.Array, video: Encoded, audio: Encoded | None = None, *,
                 train: bool = False) -> jax.Array:
        """tokens [B, T] int -> logits [B, T, vocab_size] in the compute dtype."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed = nn.Embed(self.vocab_size, self.width, name="token_embedding",
                         embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")), **kw)
        sources = {"video": video, "audio": audio}
        context, context_mask = concat_tokens([
            (dense(self.width, ("mlp", "embed"), name=f"{name}_projection", **kw)(source.tokens), source.mask)
            for name, source in sources.items() if source is not None])
        h = Transformer(num_layers=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                        dropout_rate=self.dropout, cross_attention=True, causal=True, use_rotary=True,
                        decode=self.decode, remat=self.remat, name="transformer", **kw)(
            constrain(embed(tokens)), None, context, context_mask, deterministic=not train)
        return embed.attend(layer_norm(name="norm", **kw)(h))


class LinearCaptionDecoder(_CachedDecoder):
    """The minimal reference VLM's decoder (`configs/seed_baseline.py`): linear from inputs to logits.

    Each position adds the projected clip (video and audio pooled vectors) to its token's embedding and a
    learned position embedding, then one Dense maps the sum back to the token-embedding space, whose table
    gives the logits. It sees only the current token, so it is a bigram model conditioned on the clip: the
    floor the transformer decoder has to beat. Same interface, training and decoding as `CaptionDecoder`;
    its cache holds only the position.
    """
    max_len: int = 64

    @nn.compact
    def __call__(self, tokens: jax.Array, video: Encoded, audio: Encoded | None = None, *,
                 train: bool = False) -> jax.Array:
        """tokens [B, T] int -> logits [B, T, vocab_size] in the compute dtype."""
        del train
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"{length} tokens exceed the linear caption decoder's max_len {self.max_len}")
        positions = jnp.arange(length)
        if self.decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                positions = jnp.minimum(index.value + positions, self.max_len - 1)
                index.value = index.value + length
        embed = nn.Embed(self.vocab_size, self.width, name="token_embedding",
                         embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")), **kw)
        table = self.param("position_embedding", logical(nn.initializers.normal(0.02), ("length", "embed")),
                           (self.max_len, self.width), self.param_dtype)
        clip = sum(dense(self.width, ("mlp", "embed"), name=f"{name}_projection", **kw)(source.pooled)
                   for name, source in {"video": video, "audio": audio}.items() if source is not None)
        h = embed(tokens) + jnp.take(table, positions, axis=0).astype(self.dtype) + clip[:, None, :]
        return embed.attend(dense(self.width, ("mlp", "embed"), name="decoder", **kw)(constrain(h)))


class QaHead(nn.Module):
    """Answer classification from the fused pooled vector: LayerNorm, MLP, logits over `num_answers`."""
    num_answers: int = 1000
    mlp_dim: int = 512
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array, *, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layer_norm(name="norm", **kw)(pooled)
        h = nn.gelu(dense(self.mlp_dim, ("embed", "mlp"), name="hidden", **kw)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        return dense(self.num_answers, ("mlp", "vocab"), name="logits", **kw)(h)


def choice_logits(logits: jax.Array, choices: jax.Array) -> jax.Array:
    """Multiple choice from answer logits [B, A]: the logits of each example's candidate answer ids
    `choices` [B, C], -inf where a choice is padding (-1). Use integer-label losses on the result (a one-hot
    cross-entropy would multiply 0 by -inf)."""
    picked = jnp.take_along_axis(logits, jnp.maximum(choices, 0), axis=1)
    return jnp.where(choices >= 0, picked, -jnp.inf)
