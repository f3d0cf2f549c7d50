"""BERT text tower with the exact parameter layout of Hugging Face BERT, so MiniLM loads one to one.

Post-LN layers, exact (erf) GELU and LayerNorm eps 1e-12 as in BERT; `convert/hf_bert.py` maps every
checkpoint tensor to one leaf here. Attention reuses `layers.Attention` (query/key/value/out).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.data import tokenizer
from vlm_jax.models.layers import (REMAT_POLICIES, Attention, Dtype, Encoded, LearnedPositions, check_choices,
                                   constrain, dense, key_padding_mask, layer_norm, logical, masked_mean)

POOLS = ("mean", "cls", "pooler")
LAYER_NORM_EPS = 1e-12

SIZES = {
    "tiny": {"width": 64, "depth": 2, "num_heads": 2, "mlp_dim": 128},
    "small": {"width": 256, "depth": 4, "num_heads": 4, "mlp_dim": 1024},
    "base": {"width": 384, "depth": 6, "num_heads": 12, "mlp_dim": 1536},  # all-MiniLM-L6-v2
}


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout; `attend` ties an MLM decoder to the words."""
    vocab_size: int
    width: int
    max_len: int
    type_vocab_size: int
    dropout: float
    dtype: Dtype
    param_dtype: Dtype

    def setup(self):
        init = nn.initializers.normal(stddev=0.02)  # BERT's initializer_range
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.word_embeddings = nn.Embed(self.vocab_size, self.width, embedding_init=logical(init, ("vocab", "embed")),
                                        **kw)
        self.position_embeddings = LearnedPositions(self.max_len, param_dtype=self.param_dtype)
        # Two rows: replicate them rather than shard a "vocab" axis that cannot divide.
        self.token_type_embeddings = nn.Embed(self.type_vocab_size, self.width,
                                              embedding_init=logical(init, (None, "embed")), **kw)
        self.norm = layer_norm(epsilon=LAYER_NORM_EPS, **kw)
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, ids: jax.Array, token_types: jax.Array, deterministic: bool) -> jax.Array:
        x = self.position_embeddings(self.word_embeddings(ids) + self.token_type_embeddings(token_types))
        return self.drop(self.norm(x), deterministic=deterministic)

    def attend(self, hidden: jax.Array) -> jax.Array:
        return self.word_embeddings.attend(hidden)


class BertLayer(nn.Module):
    """Post-LN: attention -> add & norm -> intermediate (GELU) -> output -> add & norm."""
    num_heads: int
    mlp_dim: int
    dropout: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = Attention(self.num_heads, dropout_rate=self.dropout, name="attention", **kw)(
            x, mask=key_padding_mask(mask), deterministic=deterministic)
        x = layer_norm(epsilon=LAYER_NORM_EPS, name="attention_norm", **kw)(x + drop(h))
        h = dense(self.mlp_dim, ("embed", "mlp"), name="intermediate", **kw)(x)
        h = constrain(nn.gelu(h, approximate=False), ("activation_batch", "activation_length", "activation_mlp"))
        h = dense(x.shape[-1], ("mlp", "embed"), name="output", **kw)(h)
        return constrain(layer_norm(epsilon=LAYER_NORM_EPS, name="output_norm", **kw)(x + drop(h)))


class BertEncoder(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float
    remat: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool) -> jax.Array:
        layer = BertLayer
        if self.remat != "none":
            layer = nn.remat(BertLayer, policy=REMAT_POLICIES[self.remat], static_argnums=(3,))
        for i in range(self.depth):
            x = layer(self.num_heads, self.mlp_dim, self.dropout, self.dtype, self.param_dtype, name=f"layer_{i}")(
                x, mask, deterministic)
        return x


class Bert(nn.Module):
    """BERT encoder; `pool` picks the pooled vector: "mean" (sentence-transformers), "cls" or "pooler".

    The pooler (dense + tanh on [CLS]) always runs so a checkpoint has no unused tensors; with another
    `pool` its parameters get no gradient.
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"pool": POOLS}
    vocab_size: int = tokenizer.VOCAB_SIZE
    width: int = 384
    depth: int = 6
    num_heads: int = 12
    mlp_dim: int = 1536
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.0
    pool: str = "mean"
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        check_choices(self)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = BertEmbeddings(self.vocab_size, self.width, self.max_len, self.type_vocab_size,
                                         self.dropout, **kw)
        self.encoder = BertEncoder(self.depth, self.num_heads, self.mlp_dim, self.dropout, self.remat, **kw)
        self.pooler = dense(self.width, ("embed", None), **kw)

    def __call__(self, ids: jax.Array, mask: jax.Array, *, train: bool = False,
                 token_types: jax.Array | None = None) -> Encoded:
        """ids, mask, token_types: [B, L] with L <= max_len; mask is 1 for real tokens."""
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len {self.max_len}")
        if token_types is None:
            token_types = jnp.zeros_like(ids)
        mask = mask.astype(bool)
        x = self.embeddings(ids, token_types, deterministic=not train)
        x = self.encoder(x, mask, deterministic=not train)
        pooler_output = jnp.tanh(self.pooler(x[:, 0]))
        if self.pool == "mean":
            pooled = masked_mean(x, mask)
        elif self.pool == "cls":
            pooled = x[:, 0]
        else:
            pooled = pooler_output
        return Encoded(x, pooled, mask)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, L, width] -> [B, L, vocab] scores against the word-embedding table (a tied MLM decoder)."""
        return self.embeddings.attend(hidden)

    def embedding_table(self) -> jax.Array:
        """The [vocab, width] word embeddings, for heads that tie their own decoder to them."""
        return self.embeddings.word_embeddings.embedding
