"""Single-frame baseline: a ViT over the middle frame only, to measure how much a task needs time at all."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import Encoded, TokenGrid
from vlm_jax.models.video.vivit import POOLS, ViViT, tubelet_grid

SIZES = {
    "tiny": dict(width=64, depth=2, num_heads=2, mlp_dim=256, patch=8),
    "small": dict(width=192, depth=4, num_heads=3, mlp_dim=768, patch=8),
    "base": dict(width=384, depth=6, num_heads=6, mlp_dim=1536, patch=8),
}


class SingleFrame(nn.Module):
    """ViT on frame T // 2: a joint ViViT with (1, patch, patch) tubelets fed that one frame.

    Slicing happens before anything else, so no other frame can reach the output. Tokens are the
    frame's patch tokens [B, (H / patch) * (W / patch), width]; pooled is the CLS token or the mean.
    The patch kernel is stored as [1, patch, patch, 3, width], ready to inflate into a ViViT tubelet.
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"pool": POOLS}
    width: int = 64
    depth: int = 2
    num_heads: int = 2
    mlp_dim: int = 256
    patch: int = 8
    pool: str = "cls"
    dropout: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def token_grid(self, video_shape: tuple[int, ...]) -> TokenGrid:
        """The middle frame's patch grid; no other frame holds a token."""
        middle = video_shape[1] // 2
        _, height, width = tubelet_grid((1, 1) + tuple(video_shape[2:]), (1, self.patch, self.patch))
        return TokenGrid(1, height, width, frames=(middle, middle + 1))

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        middle = video.shape[1] // 2
        frame = video[:, middle:middle + 1]
        vit = ViViT(variant="joint", width=self.width, depth=self.depth, num_heads=self.num_heads,
                    mlp_dim=self.mlp_dim, tubelet=(1, self.patch, self.patch), pool=self.pool, dropout=self.dropout,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="vit")
        return vit(frame, train=train)
