"""Linear video encoder: the video tower of the minimal reference VLM (`configs/seed_baseline.py`).

Pixels go through one Dense layer and nothing else, so any variant that beats it has earned its
nonlinearity, depth or attention. It is the research table's floor, not a model to use.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import Dtype, Encoded, TokenGrid, check_choices, constrain, dense

TOKENS = ("frame", "clip")

SIZES = {
    "tiny": {"width": 64},
    "small": {"width": 256},
    "base": {"width": 384},
}


class LinearVideo(nn.Module):
    """Flattened frames [B, T, H*W*3] -> Dense -> `width`.

    `tokens="frame"` projects every frame (tokens [B, T, width]); `tokens="clip"` averages the frames first
    (one token [B, 1, width]). Either way `pooled` is the projection of the mean frame: the map is
    linear, so averaging before or after it gives the same vector. Frames carry no position, so the
    encoder cannot tell the order of events: the baseline for what temporal modelling adds.
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"tokens": TOKENS}
    width: int = 64
    tokens: str = "frame"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def token_grid(self, video_shape: tuple[int, ...]) -> TokenGrid:
        """One token per frame, or one for the whole clip; a pixel's place is mixed into every feature."""
        return TokenGrid(video_shape[1] if self.tokens == "frame" else 1, 1, 1)

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        """`train` is accepted for the shared video-tower signature; nothing here is stochastic."""
        del train
        check_choices(self)
        batch, frames = video.shape[:2]
        flat = video.reshape(batch, frames, -1)
        if self.tokens == "clip":
            flat = flat.mean(axis=1, keepdims=True)
        # The flattened pixels play the role of `mlp` (input features) for sharding, as in fusion projections.
        projected = dense(self.width, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                          name="projection")(flat)
        return Encoded(constrain(projected), projected.mean(axis=1))
