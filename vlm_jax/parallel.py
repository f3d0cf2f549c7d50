"""The device mesh, the logical-axis rules that map the models' axis names onto it, and sharded init.

Every parameter in `vlm_jax.models` carries logical axis names ("embed", "mlp", ...) and activations are
constrained by logical names ("activation_batch", ...). `DEFAULT_RULES` maps each name onto the mesh
axes ("data", "fsdp", "tensor"), MaxText-style:

- batch dimensions of activations (and of input batches) split over ("data", "fsdp");
- parameters' "embed" dimension splits over "fsdp" (ZeRO-3 / FSDP: each device stores 1/fsdp of every
  weight and XLA all-gathers it just before use);
- "mlp", "heads", "vocab" (and their activations, and conv output channels) split over "tensor"
  (Megatron-style tensor parallelism);
- lengths, scanned "layers", conv kernel space and the audio patch dimension stay replicated.

Use:
    mesh = make_mesh(config.mesh.shape, config.mesh.axes)         # (-1, 1, 1): all devices on "data"
    rules = rules_for(mesh)                                        # DEFAULT_RULES, adjusted (see below)
    variables, shardings = sharded_init(init_fn, mesh, rules, rng)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        ... jax.jit(step, in_shardings=..., out_shardings=...)(state, to_global(host_batch, mesh))

XLA bug workaround (jax/jaxlib 0.10.2, CPU; both Shardy and GSPMD): on a mesh where "data", "fsdp" and
"tensor" are ALL larger than 1, a batch split over ("data", "fsdp") feeding chained matmuls whose weights
are split ("tensor", "fsdp") — any transformer — silently computes wrong values (e.g.
`((x @ a) @ b) @ c` with x: P(("data", "fsdp")), b, c: P("tensor", "fsdp") on 2x2x2 is off by ~6).
Splitting the batch over ("fsdp", "data") instead is correct in every case tried, but on 2-D meshes it
makes XLA rematerialise activations, so `batch_axes(mesh)` uses it only on 3-D meshes; `rules_for` and
`batch_sharding` follow it. Always take the rules from `rules_for(mesh)`.

A dimension whose size is not divisible by the product of its mesh axes is replicated instead (see
`logical_shardings`), so odd vocabularies or widths never stop a model from sharding.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vlm_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # MaxText's order; `batch_axes(mesh)` swaps it where XLA miscompiles

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# (logical name, mesh axes): the first rule whose mesh axes are still free in an array wins (flax semantics);
# None = replicated. Every logical name used in vlm_jax.models has a rule (tests/test_parallel.py checks).
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # activations
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", "tensor"),  # MaxText: the residual stream splits over "tensor" between layers
    ("activation_mlp", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", "fsdp"),  # a conv kernel's input channels play the role of "embed" ...
    ("conv_out", "tensor"),  # ... and its output channels that of "mlp"
    ("audio_mel", None),
    ("length", None),
    ("layers", None),  # the stacked-layer axis of scanned transformers
)


def resolve_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """`shape` with its one -1 (if any) replaced by the rest of the devices; UserError if it cannot fit."""
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise UserError(f"mesh.shape {shape} has more than one -1; at most one axis can take the rest of the devices")
    if any(s == 0 or s < -1 for s in shape):
        raise UserError(f"mesh.shape {shape} must be positive sizes (or one -1 for the rest of the devices)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if known > num_devices or num_devices % known:
            raise UserError(f"mesh.shape {shape}: the fixed axes use {known} devices, which does not divide the "
                            f"{num_devices} devices available")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    total = math.prod(shape)
    if total > num_devices:
        raise UserError(f"mesh.shape {shape} asks for {total} devices but only {num_devices} exist")
    if total != num_devices:
        raise UserError(f"mesh.shape {shape} uses {total} of the {num_devices} devices; their product must equal "
                        f"the device count (use -1 on one axis for the rest)")
    return shape


def make_mesh(shape: Sequence[int], axes: Sequence[str] = AXES, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh of `shape` over `devices` (default: every device of every process) named by `axes`.

    `-1` in `shape` means "the rest of the devices" (at most one). The axes are `Auto` (GSPMD decides
    intermediate shardings; flax's logical constraints need Auto axes). Device order comes from
    `jax.make_mesh`, which follows the physical topology (ICI/NVLink rings, hosts) on accelerators.
    """
    axes = tuple(axes)
    if len(set(axes)) != len(axes) or not all(isinstance(a, str) and a for a in axes):
        raise UserError(f"mesh.axes {axes} must be distinct non-empty names")
    if len(tuple(shape)) != len(axes):
        raise UserError(f"mesh.shape {tuple(shape)} has {len(tuple(shape))} entries but mesh.axes {axes} "
                        f"has {len(axes)}")
    all_devices = jax.devices() if devices is None else list(devices)
    shape = resolve_shape(shape, len(all_devices))
    return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes),
                         devices=None if devices is None else all_devices)


def normalize_rules(rules: Rules) -> tuple[tuple[str, MeshAxes], ...]:
    """Rules as flax wants them: a tuple of pairs, several mesh axes as a tuple (config/JSON gives lists)."""
    return tuple((name, tuple(target) if isinstance(target, list) else target) for name, target in rules)


def check_rules(mesh: Mesh, rules: Rules) -> None:
    """UserError if a rule names a mesh axis that `mesh` lacks (XLA would fail later with a vaguer error)."""
    for name, target in rules:
        for axis in _as_tuple(target):
            if axis not in mesh.shape:
                raise UserError(f"logical axis rule {name!r} -> {target!r} names mesh axis {axis!r}, which the mesh "
                                f"(mesh.axes {tuple(mesh.axis_names)}) lacks")


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """`spec` with every dimension that its mesh axes do not divide evenly made (more) replicated.

    For a dimension split over several axes, the longest leading run of axes whose product divides the
    size is kept (e.g. batch 6 over ("data"=2, "fsdp"=4) keeps "data"); if none does, it is replicated.
    Without this, `out_shardings`/`device_put` raise an IndivisibleError (XLA pads only intermediates).
    """
    entries = list(spec) + [None] * (len(shape) - len(spec))
    fitted = []
    for size, entry in zip(shape, entries):
        names = _as_tuple(entry)
        while names and size % math.prod(mesh.shape[a] for a in names):
            names = names[:-1]
        if not names:
            fitted.append(None)
        elif len(names) == 1 and isinstance(entry, str):
            fitted.append(entry)
        else:
            fitted.append(names if len(names) > 1 else names[0])
    while fitted and fitted[-1] is None:
        fitted.pop()
    return PartitionSpec(*fitted)


def mesh_spec(names: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
    """Logical names of one array -> PartitionSpec of mesh axes (flax's `logical_to_mesh_axes`)."""
    if names is None:
        return PartitionSpec()
    return nn.logical_to_mesh_axes(names, normalize_rules(rules))


def logical_shardings(abstract_variables: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a (boxed, `nn.LogicallyPartitioned`) tree such as `jax.eval_shape(model.init, ...)`.

    The result has the tree structure of the UNBOXED variables (one NamedSharding per array). Names map to
    mesh axes by `rules` (`mesh_spec`); leaves without names are replicated; a dimension that its mesh axes
    do not divide evenly falls back to replication (`fit_spec`) — e.g. a 30522-word vocabulary on tensor=4
    keeps the vocab axis whole — because XLA would otherwise refuse the layout (IndivisibleError).
    """
    rules = normalize_rules(rules)
    check_rules(mesh, rules)

    def sharding(leaf):
        if isinstance(leaf, nn.meta.AxisMetadata):
            spec, value = mesh_spec(getattr(leaf, "names", None), rules), nn.meta.unbox(leaf)
        else:
            spec, value = PartitionSpec(), leaf
        return NamedSharding(mesh, fit_spec(spec, np.shape(value), mesh))

    return jax.tree.map(sharding, abstract_variables, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def unbox_without_constraints(tree: Any) -> Any:
    """Strip the boxes without flax's per-box sharding constraint (out_shardings place the result)."""
    def unbox(box):
        return box.unbox(apply_constraint=False) if isinstance(box, nn.meta.Partitioned) else box.unbox()
    return nn.meta.map_axis_meta(unbox, tree)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args: Any) -> tuple[Any, Any]:
    """Run `init_fn(*args)` (returning boxed variables) straight into its sharded layout.

    The init is traced abstractly first to compute the shardings (`logical_shardings`), then compiled with
    them as `out_shardings` under `jax.set_mesh(mesh)`, so each device only ever materialises its own
    shards (no full copy on one device). With `jax_threefry_partitionable` (on by default since jax 0.5)
    random init is partition-invariant: the values equal a single-device init with the same key.
    Returns (unboxed variables, their NamedShardings; same tree structure).

    The init is traced with the logical rules switched OFF (even if the caller set them): inside it,
    flax's per-parameter constraints would only restate what `out_shardings` already fix (and without the
    divisibility fallback), and activation constraints only touch values init throws away. The train/eval steps run `apply` under the rules
    (`rules_for(mesh)`), where only activations carry constraints (the parameters arrive unboxed).
    """
    rules = normalize_rules(rules)
    check_rules(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(()):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_shardings(abstract, mesh, rules)
        variables = jax.jit(lambda *a: unbox_without_constraints(init_fn(*a)), out_shardings=shardings)(*args)
    return variables, shardings


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch dimension splits over, major first: ("data", "fsdp") — the ones `mesh` has —
    except ("fsdp", "data") when "data", "fsdp" and "tensor" are all > 1 (the XLA bug in the module doc)."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    if all(mesh.shape.get(a, 1) > 1 for a in AXES):
        axes = tuple(reversed(axes))
    return axes


def rules_for(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> tuple[tuple[str, MeshAxes], ...]:
    """`rules` for this mesh: "activation_batch" splits over `batch_axes(mesh)`."""
    return tuple((name, batch_axes(mesh) if name == "activation_batch" else target)
                 for name, target in normalize_rules(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches: the leading (example) axis splits over `batch_axes(mesh)` (data x fsdp); every other axis
    is replicated."""
    axes = batch_axes(mesh)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch axis splits (data x fsdp): the global batch must be a multiple of it."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def local_batch_shards(mesh: Mesh) -> int:
    """How many distinct batch shards this process's devices hold (its rows split this many ways)."""
    axes = [mesh.axis_names.index(a) for a in BATCH_AXES if a in mesh.shape]
    me = jax.process_index()
    coords = {tuple(index[i] for i in axes) for index, device in np.ndenumerate(mesh.devices)
              if device.process_index == me}
    return len(coords)


def to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays sharded by `batch_sharding`.

    Single process: the local batch IS the global batch. Multi-process: each process passes the rows of
    its own devices' batch shards (what a per-process loader yields), and the global batch is assembled
    from them by `jax.make_array_from_process_local_data`; processes whose devices hold the same batch
    shards (a "tensor" axis across hosts) must pass the same rows. The batch must divide by data x fsdp.
    """
    sharding = batch_sharding(mesh)
    shards, local = batch_shards(mesh), local_batch_shards(mesh)

    def convert(name, value):
        value = np.asarray(value)
        if value.ndim == 0:
            raise UserError(f"batch[{name!r}] is a scalar; every batch entry needs a leading example axis")
        if value.shape[0] % local:
            raise UserError(f"batch[{name!r}] has {value.shape[0]} examples on this process, not a multiple of "
                            f"its {local} batch shards (mesh data x fsdp = {shards}); change train.batch_size "
                            f"or mesh.shape")
        global_shape = (value.shape[0] // local * shards, *value.shape[1:])
        return jax.make_array_from_process_local_data(sharding, value, global_shape)

    return {name: convert(name, value) for name, value in batch.items()}
