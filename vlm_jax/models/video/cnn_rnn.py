"""CNN + RNN video encoder: the per-frame trunk of cnn2d.py, then an LSTM or GRU over the frame vectors.

Each frame vector is a projection of the trunk's whole `grid` x `grid` feature map (not its mean), so it
says where things are; the recurrence makes the encoding depend on frame order: the classic "LRCN"
baseline for temporal understanding.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.layers import Dtype, Encoded, TokenGrid, check_choices, constrain, dense, logical
from vlm_jax.models.video.cnn2d import TRUNK_SIZES, FrameCNN

CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}

SIZES = {
    "tiny": {**TRUNK_SIZES["tiny"], "embed_dim": 64, "cell": "lstm", "hidden": 64, "num_layers": 1,
             "bidirectional": False, "grid": 2},
    "small": {**TRUNK_SIZES["small"], "embed_dim": 256, "cell": "lstm", "hidden": 256, "num_layers": 1,
              "bidirectional": True, "grid": 4},
    "base": {**TRUNK_SIZES["base"], "embed_dim": 512, "cell": "lstm", "hidden": 512, "num_layers": 2,
             "bidirectional": True, "grid": 4},
}


class CNNRNN(nn.Module):
    """Per-frame CNN feature maps, each flattened and projected to one `embed_dim` frame vector, fed to
    `num_layers` stacked (optionally bidirectional) recurrent layers.

    tokens: every step's top-layer hidden state (forward and backward concatenated when
    bidirectional), projected to `embed_dim`. pooled: the final hidden state, i.e. the forward state
    after the last frame (concatenated with the backward state after the first frame when
    bidirectional), through the same projection. `train` changes nothing here (no dropout, no
    batch statistics); it is taken for the common encoder interface.
    """
    CHOICES: ClassVar[dict[str, tuple]] = {"cell": tuple(CELLS)}
    embed_dim: int = 256
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    groups: int = 8
    grid: int = 4
    cell: str = "lstm"
    hidden: int = 256
    num_layers: int = 1
    bidirectional: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _cell(self) -> nn.RNNCellBase:
        """An unbound cell (parent=None), so the RNN it is handed to adopts it and nests its parameters.

        Input kernels map embed -> mlp; the recurrent kernel's input axis stays unnamed because a
        partition spec may not repeat a name."""
        return CELLS[self.cell](
            self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, parent=None,
            kernel_init=logical(nn.initializers.lecun_normal(), ("embed", "mlp")),
            recurrent_kernel_init=logical(nn.initializers.orthogonal(), (None, "mlp")),
            bias_init=logical(nn.initializers.zeros_init(), ("mlp",)))

    def token_grid(self, video_shape: tuple[int, ...]) -> TokenGrid:
        """One token per frame (each step's hidden state); the trunk averages space away."""
        return TokenGrid(video_shape[1], 1, 1)

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> Encoded:
        check_choices(self)
        batch, frames = video.shape[:2]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        trunk = FrameCNN(self.stem_width, self.widths, self.depths, self.groups, self.grid, name="trunk", **kw)
        cells = trunk(video.reshape((batch * frames,) + video.shape[2:])).reshape(batch, frames, -1)
        x = nn.relu(dense(self.embed_dim, ("mlp", "embed"), name="frame_projection", **kw)(cells))
        for layer in range(self.num_layers):
            if self.bidirectional:
                x = nn.Bidirectional(nn.RNN(self._cell(), parent=None), nn.RNN(self._cell(), parent=None),
                                     name=f"layer_{layer}")(x)
            else:
                x = nn.RNN(self._cell(), name=f"layer_{layer}")(x)
        final = x[:, -1]
        if self.bidirectional:  # the backward direction finishes at the first frame
            final = jnp.concatenate([x[:, -1, :self.hidden], x[:, 0, self.hidden:]], axis=-1)
        project = dense(self.embed_dim, ("mlp", "embed"), name="project", **kw)
        return Encoded(tokens=constrain(project(x)), pooled=project(final))
