"""Bag-of-words text tower: the cheapest text baseline, an order-blind pool of word embeddings.

With `out_dim` set it is also the `linear` text encoder of the minimal reference VLM
(`configs/seed_baseline.py`): mean-pooled word embeddings through one Dense layer. Projecting each token
and then averaging equals averaging and then projecting, since the map is linear.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.data import tokenizer
from vlm_jax.models.layers import Dtype, Encoded, check_choices, dense, logical, masked_mean

POOLS = ("mean", "max")

SIZES = {
    "tiny": {"width": 64},
    "small": {"width": 256},
    "base": {"width": 384},
}
# The `linear` text encoder: this module with a projection to the hidden width, mean pooling.
LINEAR_SIZES = {size: {**sizes, "out_dim": sizes["width"], "pool": "mean"} for size, sizes in SIZES.items()}


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Max of [B, L, D] over real tokens only; a row without real tokens pools to zeros."""
    real = mask.astype(bool)[..., None]
    pooled = jnp.max(jnp.where(real, x, -jnp.inf), axis=1)
    return jnp.where(jnp.any(real, axis=1), pooled, 0).astype(x.dtype)


class BagOfWords(nn.Module):
    """Word embeddings pooled over real tokens, optionally projected to `out_dim` (0 keeps `width`).

    The projection is applied per token before pooling so `tokens` and `pooled` share one width,
    which is what fusion modules expect; `logits` still takes hidden states of `width`.
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"pool": POOLS}
    vocab_size: int = tokenizer.VOCAB_SIZE
    width: int = 384
    pool: str = "mean"
    out_dim: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        check_choices(self)
        # Unit-norm rows on average, so pooled vectors and tied logits start at a sane scale.
        init = nn.initializers.normal(stddev=self.width ** -0.5)
        self.word_embeddings = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                                        embedding_init=logical(init, ("vocab", "embed")))
        if self.out_dim:
            self.projection = dense(self.out_dim, ("embed", None), dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, ids: jax.Array, mask: jax.Array, *, train: bool = False) -> Encoded:
        """`train` is accepted for the shared text-tower signature; nothing here is stochastic."""
        del train
        tokens = self.word_embeddings(ids)
        if self.out_dim:
            tokens = self.projection(tokens)
        pooled = masked_mean(tokens, mask) if self.pool == "mean" else masked_max(tokens, mask)
        return Encoded(tokens, pooled, mask.astype(bool))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, L, width] -> [B, L, vocab] scores against the word-embedding table (a tied MLM decoder)."""
        return self.word_embeddings.attend(hidden)

    def embedding_table(self) -> jax.Array:
        """The [vocab, width] word embeddings, for heads that tie their own decoder to them."""
        return self.word_embeddings.embedding
