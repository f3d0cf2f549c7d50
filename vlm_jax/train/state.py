"""The train state, created straight into its sharded layout on the mesh.

`TrainState` is a plain pytree (params, optimizer state, BatchNorm statistics, step and a PRNG key), so
jit in/out shardings, donation and orbax checkpoints all see one tree. The optimizer itself is not in the
state (it is code, rebuilt from the config); each step's randomness is `fold_in(state.rng, state.step)`,
so a resumed run draws exactly the keys an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax import parallel
from vlm_jax.models import summary, vlm

INIT_RNGS = ("params", "masking", "dropout")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer micro-steps taken
    params: Any
    opt_state: Any
    batch_stats: Any  # {} unless the model has BatchNorm (I3D)
    rng: jax.Array  # typed PRNG key; step keys are fold_in(rng, step)

    def variables(self) -> dict:
        """The flax variables dict for `model.apply`."""
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def make_model(config: ml_collections.ConfigDict, num_answers: int) -> vlm.VLM:
    return vlm.VLM(ml_collections.FrozenConfigDict(config.model), num_answers=num_answers)


def _like_params(opt_state: Any, params: Any, param_shardings: Any, default: NamedSharding) -> Any:
    """A sharding for each optimizer-state leaf: its parameter's where the leaf's key path ends with a
    parameter's path and has its shape (Adam moments, accumulated gradients, in any optax wrapper), else
    `default` (counts, scalars). `optax.tree_map_params` cannot do this through `multi_transform`'s
    masked states."""
    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                      jax.tree_util.tree_leaves(param_shardings)):
        by_path[tuple(path)] = (leaf.shape, sharding)

    def sharding(path, leaf):
        for start in range(len(path)):
            match = by_path.get(tuple(path[start:]))
            if match is not None and match[0] == leaf.shape:
                return match[1]
        return default

    return jax.tree_util.tree_map_with_path(sharding, opt_state)


class StateFactory:
    """Builds the state of `model` for `config` on `mesh`: its abstract shapes and shardings (the
    checkpoint restore target), or a fresh state from `config.seed` with every leaf born on its devices.

    Parameters and BatchNorm statistics take the logical-axis shardings (`parallel.logical_shardings`);
    optimizer moments take their parameter's sharding (`_like_params`); counters, the step and
    the key are replicated. `make_tx` builds the optimizer from the abstract parameters (`self.tx`);
    `audio_samples` is the data's waveform length (the audio tower's input).
    """

    def __init__(self, model: vlm.VLM, make_tx: Callable[[Any], optax.GradientTransformation],
                 config: ml_collections.ConfigDict, mesh: Mesh, rules: parallel.Rules, audio_samples: int | None = None):
        self.model, self.mesh, self.seed = model, mesh, int(config.seed)
        self._inputs = summary.example_inputs(config, audio_samples)
        with jax.set_mesh(mesh), nn.logical_axis_rules(()):
            boxed = jax.eval_shape(self._init_variables, jax.random.key(0))
        var_shardings = parallel.logical_shardings(boxed, mesh, rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        params = nn.meta.unbox(boxed)["params"]
        self.tx = tx = make_tx(params)
        opt_shardings = _like_params(jax.eval_shape(tx.init, params), params, var_shardings["params"], replicated)
        self.shardings = TrainState(step=replicated, params=var_shardings["params"], opt_state=opt_shardings,
                                    batch_stats=var_shardings.get("batch_stats", {}), rng=replicated)

    def _init_variables(self, rng: jax.Array) -> Any:
        keys = dict(zip(INIT_RNGS, jax.random.split(rng, len(INIT_RNGS))))
        return self.model.init(keys, **self._inputs)

    def _init_state(self, key: jax.Array) -> TrainState:
        param_rng, state_rng = jax.random.split(key)
        variables = parallel.unbox_without_constraints(self._init_variables(param_rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          opt_state=self.tx.init(variables["params"]), batch_stats=variables.get("batch_stats", {}),
                          rng=state_rng)

    def create(self) -> TrainState:
        """A fresh state; with `jax_threefry_partitionable` (default) its values do not depend on the mesh."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(()):
            return jax.jit(self._init_state, out_shardings=self.shardings)(jax.random.key(self.seed))

    def abstract(self) -> TrainState:
        """jax.ShapeDtypeStructs carrying the shardings: the target that restores a checkpoint onto this mesh."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(()):
            shapes = jax.eval_shape(self._init_state, jax.random.key(self.seed))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, self.shardings)
