"""Fusion of the modality towers into one representation for the heads.

Every module takes the towers' `Encoded` outputs (their widths may differ), first projects each
modality to its own `width` with one Dense shared by that modality's tokens and pooled vector, and
returns `Fused`: tokens aligned with the TEXT positions (the MLM head reads them) and one pooled
vector (VTM and QA read it). The text may hold k rows per clip (clip-major: row r belongs to clip
r // k), as when each clip meets all of its questions; the video and audio are then projected once per
clip, and cross-attention reads one copy of them for the k texts. With `clip_rows` [G], the text holds k
rows per entry of `clip_rows` and entry g meets clip `clip_rows[g]`, as when pretraining pairs the same
clips with several kinds of text; every clip is still projected once, and cross-attention computes its
keys and values once per clip and layer. All modules share one field set, so the single config block
`model.fusion` configures any of them; `FUSIONS` maps `model.fusion.name` to the module.

- `dual`: a dual encoder; no cross-modal interaction at all.
- `add`: the element-wise sum of the projected modalities (the minimal reference VLM's fusion).
- `concat_late`: pooled vectors meet in an MLP; tokens see no other modality.
- `concat_early`: one joint transformer over [CLS, text, video, audio] tokens.
- `cross_attention`: text tokens attend to video (+ audio) tokens (ALPRO / BLIP).
- `co_attention`: text and video (+ audio) streams attend to each other every layer (ViLBERT).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import (Dtype, Encoded, Transformer, constrain, dense, layer_norm, logical, masked_mean,
                                   repeat_encoded, take_rows)

POOLED = ("activation_batch", "activation_embed")


class Fused(NamedTuple):
    """What every fusion returns."""
    tokens: jax.Array  # [B, L_text, width], aligned with the text positions
    pooled: jax.Array  # [B, width]


def concat_tokens(parts: Sequence[tuple[jax.Array, jax.Array | None]]) -> tuple[jax.Array, jax.Array | None]:
    """Join (tokens [B, N_i, D], mask [B, N_i] or None) pairs along length; the mask is None when all are real."""
    tokens = jnp.concatenate([t for t, _ in parts], axis=1)
    if all(m is None for _, m in parts):
        return tokens, None
    mask = jnp.concatenate([jnp.ones(t.shape[:2], bool) if m is None else m.astype(bool) for t, m in parts], axis=1)
    return tokens, mask


class _Fusion(nn.Module):
    """The field set shared by every fusion module; not every module reads every field. `MIXES_TOKENS`:
    whether the fused tokens see the video (what VTM and MLM need); `CROSS_ATTENTION`: whether text
    attends to the video tokens (what attention explanations read)."""
    MIXES_TOKENS: ClassVar[bool] = True
    CROSS_ATTENTION: ClassVar[bool] = False
    width: int = 256
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 1024
    dropout: float = 0.0
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _project(self, encoded: Encoded, name: str) -> Encoded:
        """The modality in this module's width; the input features play the role of `mlp` for sharding."""
        projection = dense(self.width, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        mask = None if encoded.mask is None else encoded.mask.astype(bool)
        return Encoded(constrain(projection(encoded.tokens)), projection(encoded.pooled), mask)

    def _modalities(self, video: Encoded, text: Encoded, audio: Encoded | None, per_text: bool = True,
                    clip_rows: jax.Array | None = None) -> dict[str, Encoded]:
        """Projected modalities by name, in the order text, video, audio (audio only when given); with
        `per_text`, video and audio are taken by `clip_rows` (when given) and repeated to one row per text row."""
        given = {"text": text, "video": video, "audio": audio}
        projected = {name: self._project(enc, f"{name}_projection") for name, enc in given.items() if enc is not None}
        if per_text:
            if clip_rows is not None:
                projected.update({name: take_rows(enc, clip_rows) for name, enc in projected.items() if name != "text"})
            rows = text.tokens.shape[0]
            projected.update({name: repeat_encoded(enc, rows // enc.tokens.shape[0])
                              for name, enc in projected.items() if name != "text"})
        return projected

    def _transformer(self, name: str, num_layers: int | None = None, cross_attention: bool = False) -> Transformer:
        return Transformer(num_layers=self.depth if num_layers is None else num_layers, num_heads=self.num_heads,
                           mlp_dim=self.mlp_dim, dropout_rate=self.dropout, cross_attention=cross_attention,
                           remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def _norm(self, name: str) -> nn.LayerNorm:
        return layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class DualEncoder(_Fusion):
    """A dual encoder: pooled = LayerNorm(product of the projected pooled vectors), tokens = projected text.

    The elementwise product is the cheapest late interaction that still lets a QA head condition on
    both modalities. The tokens never see the video, so VTM and MLM are not meaningful with this
    fusion (config validation forbids them); contrastive learning reads the towers directly.
    """
    MIXES_TOKENS: ClassVar[bool] = False

    @nn.compact
    def __call__(self, video: Encoded, text: Encoded, audio: Encoded | None = None, *,
                 train: bool = False, clip_rows: jax.Array | None = None) -> Fused:
        modalities = self._modalities(video, text, audio, clip_rows=clip_rows)
        product = modalities["text"].pooled
        for name in ("video", "audio"):
            if name in modalities:
                product = product * modalities[name].pooled
        return Fused(modalities["text"].tokens, constrain(self._norm("norm")(product), POOLED))


class AddFusion(_Fusion):
    """Fusion by addition: pooled = the sum of the projected pooled vectors of text, video (+ audio).

    The minimal reference VLM's fusion (`configs/seed_baseline.py`), and an option for any towers. Tokens
    are the projected text tokens plus the projected video (+ audio) pooled vectors at every position, so
    VTM and MLM see the video through the same sum. No normalisation or nonlinearity: the heads on top
    decide what to do with the sum.
    """

    @nn.compact
    def __call__(self, video: Encoded, text: Encoded, audio: Encoded | None = None, *,
                 train: bool = False, clip_rows: jax.Array | None = None) -> Fused:
        modalities = self._modalities(video, text, audio, clip_rows=clip_rows)
        text = modalities.pop("text")
        others = sum(m.pooled for m in modalities.values())
        return Fused(constrain(text.tokens + others[:, None, :]), constrain(text.pooled + others, POOLED))


class ConcatLate(_Fusion):
    """Late fusion: the projected pooled vectors are concatenated and mixed by an MLP.

    There is no cross-modal token interaction: tokens are the projected text tokens, so an MLM head
    on top predicts from text alone.
    """

    @nn.compact
    def __call__(self, video: Encoded, text: Encoded, audio: Encoded | None = None, *,
                 train: bool = False, clip_rows: jax.Array | None = None) -> Fused:
        modalities = self._modalities(video, text, audio, clip_rows=clip_rows)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        joint = jnp.concatenate([m.pooled for m in modalities.values()], axis=-1)
        hidden = nn.gelu(dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(joint))
        hidden = nn.Dropout(self.dropout)(hidden, deterministic=not train)
        pooled = self._norm("norm")(dense(self.width, ("mlp", "embed"), name="fc2", **kw)(hidden))
        return Fused(modalities["text"].tokens, constrain(pooled, POOLED))


class ConcatEarly(_Fusion):
    """Early fusion: one transformer over [CLS, text, video, audio] tokens, each modality tagged by a learned
    embedding; tokens = the text part of the output, pooled = the CLS output."""

    @nn.compact
    def __call__(self, video: Encoded, text: Encoded, audio: Encoded | None = None, *,
                 train: bool = False, clip_rows: jax.Array | None = None) -> Fused:
        modalities = self._modalities(video, text, audio, clip_rows=clip_rows)
        init = logical(nn.initializers.normal(0.02), ("embed",))
        batch = text.tokens.shape[0]
        cls = self.param("cls", init, (self.width,), self.param_dtype).astype(self.dtype)
        parts = [(jnp.broadcast_to(cls, (batch, 1, self.width)), None)]
        for name, encoded in modalities.items():
            tag = self.param(f"{name}_embedding", init, (self.width,), self.param_dtype).astype(self.dtype)
            parts.append((encoded.tokens + tag, encoded.mask))
        tokens, mask = concat_tokens(parts)
        out = self._norm("norm")(self._transformer("transformer")(tokens, mask, deterministic=not train))
        text_length = text.tokens.shape[1]
        return Fused(constrain(out[:, 1:1 + text_length]), constrain(out[:, 0], POOLED))


class CrossAttentionFusion(_Fusion):
    """Text tokens attend to the video (+ audio) tokens in every layer (ALPRO / BLIP); pooled = the
    first text token's output, which the text tower puts at [CLS]."""
    CROSS_ATTENTION: ClassVar[bool] = True

    @nn.compact
    def __call__(self, video: Encoded, text: Encoded, audio: Encoded | None = None, *,
                 train: bool = False, clip_rows: jax.Array | None = None) -> Fused:
        modalities = self._modalities(video, text, audio, per_text=False)
        query = modalities.pop("text")
        context, context_mask = concat_tokens([(m.tokens, m.mask) for m in modalities.values()])
        out = self._transformer("transformer", cross_attention=True)(
            query.tokens, query.mask, context, context_mask, clip_rows, deterministic=not train)
        out = self._norm("norm")(out)
        return Fused(constrain(out), constrain(out[:, 0], POOLED))


class CoAttention(_Fusion):
    """ViLBERT-style co-attention: per layer, text attends to video (+ audio) and video (+ audio) attends to
    text, both from the previous layer's states. pooled = projection of [text CLS, mean of the video stream]
    (video towers need not have a CLS)."""
    CROSS_ATTENTION: ClassVar[bool] = True

    @nn.compact
    def __call__(self, video: Encoded, text: Encoded, audio: Encoded | None = None, *,
                 train: bool = False, clip_rows: jax.Array | None = None) -> Fused:
        modalities = self._modalities(video, text, audio, clip_rows=clip_rows)
        text_stream = modalities.pop("text")
        text_tokens, text_mask = text_stream.tokens, text_stream.mask
        video_tokens, video_mask = concat_tokens([(m.tokens, m.mask) for m in modalities.values()])
        for i in range(self.depth):
            text_layer = self._transformer(f"text_layer_{i}", num_layers=1, cross_attention=True)
            video_layer = self._transformer(f"video_layer_{i}", num_layers=1, cross_attention=True)
            text_tokens, video_tokens = (
                text_layer(text_tokens, text_mask, video_tokens, video_mask, deterministic=not train),
                video_layer(video_tokens, video_mask, text_tokens, text_mask, deterministic=not train))
        text_tokens = self._norm("text_norm")(text_tokens)
        video_tokens = self._norm("video_norm")(video_tokens)
        joint = jnp.concatenate([text_tokens[:, 0], masked_mean(video_tokens, video_mask)], axis=-1)
        pooled = dense(self.width, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                       name="pool")(joint)
        return Fused(constrain(text_tokens), constrain(pooled, POOLED))


FUSIONS: dict[str, type[_Fusion]] = {
    "dual": DualEncoder,
    "add": AddFusion,
    "concat_late": ConcatLate,
    "concat_early": ConcatEarly,
    "cross_attention": CrossAttentionFusion,
    "co_attention": CoAttention,
}
