"""A run's orbax checkpoint in other layouts: one portable file and back, or another mesh.

    names = export("runs/pretrain", "pretrain.safetensors")             # latest step, whole train state
    export("runs/pretrain", "params.npz", params_only=True)            # parameters only
    import_file("pretrain.safetensors", "runs/pretrain/config.json", "runs/copy")  # a run dir again
    reshard("runs/pretrain", "runs/pretrain_fsdp", (1, 8, 1))           # the same state on another mesh

The file: every array of the train state under its "/"-joined path, the names the checkpoint's checksums
use (`params/video_encoder/.../kernel`, `opt_state/2/inner_states/lr*1.0/inner_state/0/mu/...`, `step`,
`rng`), as `.safetensors` or `.npz` (chosen by the suffix). The optimizer state is named by position and
field (optax states are named tuples), which `mapping.flatten` (dicts only) cannot name. Dtypes are kept
exactly; the PRNG key `rng` is stored as its key data (uint32, as orbax stores it) and rewrapped on
import with the config's key type. Dtypes a format cannot hold (bfloat16 in `.npz`, float8 or int4 in
either; safetensors holds bfloat16 natively) are stored as unsigned integers of the same width, bit for
bit, and the metadata's `dtypes` names their real dtype. `params_only` files hold `params/...` and the
BatchNorm statistics `batch_stats/...` (which inference needs; none unless the model has BatchNorm).

Metadata (safetensors' header metadata; in `.npz` the JSON text as a uint8 array named `__metadata__`):
`format`, `step`, `config_hash` (the checkpoint's, see `checkpoint.config_hash`), `params_only`, `dtypes`,
`checksums` (the checkpoint's per-array checksums, so an import detects a damaged file), `config` (the
run's config.json, so the file alone can be imported) and, for whole states, `data_state` (each process's
data-iterator state, restored when the importing run has the same process count). Nothing is pickled:
`.npz` files are read with `allow_pickle=False`.

Import builds the abstract train state of the config (`Run(config).factory.abstract()`, which needs the
config's data set, as `vlm eval` does; it is built when missing), fills it from the file, refusing
missing, unexpected, mis-shaped or mis-typed names, and saves it as an orbax checkpoint of a new run
directory (with its config.json) that `vlm eval`, a resumed `vlm train` and `init_from.workdir` read. From
a `params_only` file the rest of the state is fresh: the optimizer state is the config's optimizer's
`init` of the imported parameters (zero Adam moments), the key is the config's seed's, and the state's
step is the checkpoint's step, so a resumed run continues the learning-rate schedule from there.

Reshard restores a step onto the abstract state of the same config with `mesh.shape` replaced (orbax reads
each device's slices of every array), and saves it, with the step's data-iterator state and metrics, into
a new run directory whose config.json has the new mesh. Import and reshard write checkpoints with the
new config's hash. With several processes, every process reads; process 0 writes the file and config.json.

Reading a source run never writes to it: its steps, metadata and arrays are read straight from
`workdir/checkpoints/<step>/` (no `CheckpointManager`, which would clean up the temporary directory of a
save still in progress), and every array is checked against the checksums saved with it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax import config as config_lib
from vlm_jax.errors import UserError
from vlm_jax.train import checkpoint as checkpoint_lib

log = logging.getLogger(__name__)

FORMAT = "vlm_jax.run_checkpoint/1"
SUFFIXES = (".safetensors", ".npz")
NPZ_METADATA = "__metadata__"
MODEL_VARIABLES = ("params", "batch_stats")  # what a params_only file holds
# dtypes stored as themselves; any other is stored as the unsigned integer of its width
_SAFETENSORS_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                       "float16", "float32", "float64", "bfloat16", "complex64"}
_LISTED = 8  # names shown in an error before "(+N more)"
_JSON_KEYS = ("step", "params_only", "dtypes", "checksums", "data_state")  # metadata values stored as JSON


# --- the file ------------------------------------------------------------------------------------------

def _suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: the file must end in .safetensors or .npz (got {suffix or 'no suffix'!r})")
    return suffix


def _native(dtype: np.dtype, suffix: str) -> bool:
    if suffix == ".safetensors":
        return dtype.name in _SAFETENSORS_DTYPES
    return dtype.kind in "biufc" and dtype.name in np.sctypeDict


def _dtype(name: str) -> np.dtype:
    """A dtype by name, numpy's or ml_dtypes' (bfloat16, float8_*, int4, ...)."""
    try:
        return np.dtype(name)
    except TypeError:
        if not hasattr(ml_dtypes, name):
            raise UserError(f"unknown dtype {name!r} in the file's metadata") from None
        return np.dtype(getattr(ml_dtypes, name))


def _encode(arrays: Mapping[str, np.ndarray], suffix: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays as the format stores them, {name: real dtype} of those stored as their bits)."""
    stored, dtypes = {}, {}
    for name, array in arrays.items():
        array = np.require(array, requirements="C")  # (np.ascontiguousarray makes scalars 1-d)
        if not _native(array.dtype, suffix):
            dtypes[name] = array.dtype.name
            array = array.view(np.dtype(f"uint{8 * array.dtype.itemsize}"))
        stored[name] = array
    return stored, dtypes


def write_file(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Write `arrays` ({name: array}) and `metadata` (JSON-able values) to one `.safetensors` or `.npz`
    file, atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    suffix = _suffix(path)
    stored, dtypes = _encode(arrays, suffix)
    header = {key: json.dumps(value, sort_keys=True) if key in _JSON_KEYS else str(value)
              for key, value in {**metadata, "dtypes": dtypes}.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(stored, str(tmp), metadata=header)
        else:
            if NPZ_METADATA in stored:
                raise UserError(f"an array may not be named {NPZ_METADATA!r} in an .npz export")
            entries = {**stored, NPZ_METADATA: np.frombuffer(json.dumps(header).encode(), np.uint8)}
            with open(tmp, "wb") as f:
                np.savez(f, **entries)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({name: array} with the real dtypes, metadata) of a file written by `write_file` (or any plain
    safetensors / npz file, whose metadata is then empty). UserError for an unreadable file."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="np") as f:
                header = dict(f.metadata() or {})
                arrays = {name: f.get_tensor(name) for name in f.keys()}
        else:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
            raw = arrays.pop(NPZ_METADATA, None)
            header = json.loads(raw.tobytes().decode()) if raw is not None else {}
    except UserError:
        raise
    except Exception as error:  # a truncated, foreign or pickled file: one line naming it
        raise UserError(f"{path} is not a readable {suffix} file: {' '.join(str(error).split())[:200]}") from None
    try:
        metadata = {key: json.loads(value) if key in _JSON_KEYS else value for key, value in header.items()}
    except ValueError:
        raise UserError(f"{path} has malformed metadata") from None
    for name, dtype in (metadata.get("dtypes") or {}).items():
        if name in arrays:
            arrays[name] = arrays[name].view(_dtype(dtype))
    return arrays, metadata


# --- reading a run's checkpoint, without writing to it ------------------------------------------------

def _source_step(workdir: str | os.PathLike, step: int | None) -> tuple[Path, int, dict]:
    """(the step's directory, the step, its `meta` JSON) of a run's checkpoint (the latest by default)."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"{workdir} has no checkpoints/ directory")
    steps = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        raise UserError(f"{workdir} has no checkpoint yet")
    if step is None:
        step = steps[-1]
    elif int(step) not in steps:
        raise UserError(f"{workdir} has no checkpoint for step {step}; it has {steps}")
    step_dir = directory / str(int(step))
    meta_path = step_dir / checkpoint_lib.META / "metadata"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return step_dir, int(step), meta


def _read_numpy(step_dir: Path, only: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The saved state's arrays as numpy, {path name: array} (those under the top-level keys `only`)."""
    state_dir = step_dir / checkpoint_lib.STATE
    with ocp.PyTreeCheckpointer() as reader:
        tree = reader.metadata(state_dir).item_metadata.tree
        partial = only is not None
        if partial:
            tree = {key: tree[key] for key in only if key in tree and jax.tree.leaves(tree[key])}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=tree, restore_args=restore_args, partial_restore=partial))
    return {checkpoint_lib._path_name(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _verify_numpy(step: int, arrays: Mapping[str, np.ndarray], checksums: Mapping[str, int] | None) -> None:
    """UserError when arrays differ from the checksums saved with them (computed on the CPU)."""
    cpu = jax.local_devices(backend="cpu")[0]
    checkpoint_lib._verify(step, {name: jax.device_put(a, cpu) for name, a in arrays.items()}, checksums)


def _read_data_states(step_dir: Path) -> dict[str, str]:
    """{`process_<i>-of-<n>.json`: its text} of the step's data-iterator states."""
    directory = step_dir / checkpoint_lib.DATA
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(directory.glob("process_*-of-*.json"))}


def _data_state_for_this_process(states: Mapping[str, str]) -> Any:
    text = states.get(checkpoint_lib._data_filename())
    if text is None:
        if states:
            log.warning("the data-iterator states are for another process count (%s); the data pipeline "
                        "restarts", ", ".join(sorted(states)))
        return None
    return checkpoint_lib._decode_data_state(text)


# --- export --------------------------------------------------------------------------------------------

def export(workdir: str | os.PathLike, out_path: str | os.PathLike, step: int | None = None,
           params_only: bool = False) -> dict[str, tuple]:
    """Write the train state of `workdir`'s checkpoint `step` (the latest by default) to `out_path`, one
    `.safetensors` or `.npz` file (by its suffix), as the module doc describes; only the model's
    variables (`params/...`, `batch_stats/...`) with `params_only`. Returns {name: (shape, dtype name)}.
    UserError for another suffix, a missing step, or arrays that differ from their saved checksums."""
    _suffix(out_path)
    step_dir, step, meta = _source_step(workdir, step)
    arrays = _read_numpy(step_dir, MODEL_VARIABLES if params_only else None)
    checksums = meta.get("checksums")
    _verify_numpy(step, arrays, checksums)
    config_path = Path(workdir) / "config.json"
    metadata = {
        "format": FORMAT,
        "step": step,
        "config_hash": meta.get("config_hash") or "",
        "params_only": bool(params_only),
        "checksums": {name: checksums[name] for name in arrays if name in (checksums or {})},
        "config": config_path.read_text() if config_path.is_file() else "",
    }
    if not params_only:
        metadata["data_state"] = _read_data_states(step_dir)
    if jax.process_index() == 0:
        write_file(out_path, arrays, metadata)
    log.info("exported step %d of %s (%d arrays) to %s", step, workdir, len(arrays), out_path)
    return {name: (tuple(a.shape), a.dtype.name) for name, a in arrays.items()}


# --- import --------------------------------------------------------------------------------------------

def _key_leaf(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _file_form(leaf: jax.ShapeDtypeStruct) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an abstract leaf as the file holds it (a PRNG key: its key data)."""
    if _key_leaf(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def _listed(names: Sequence[str]) -> str:
    names = list(names)
    more = f" (+{len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def _check_fits(path: Any, arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> None:
    """One UserError naming the missing, unexpected, mis-shaped and mis-typed arrays of the file."""
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    wrong = sorted(f"{name} {tuple(arrays[name].shape)} {arrays[name].dtype.name} (want {shape} {dtype.name})"
                   for name, (shape, dtype) in expected.items()
                   if name in arrays and (tuple(arrays[name].shape), arrays[name].dtype) != (shape, dtype))
    if missing or unexpected or wrong:
        problems = [f"{what} {_listed(names)}" for what, names in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped or mis-typed", wrong)) if names]
        raise UserError(f"{path} does not fit the config's train state: {'; '.join(problems)}")


def _to_device(array: np.ndarray, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    """`array` on the abstract leaf's sharding (a PRNG key rewrapped from its key data)."""
    data = jax.make_array_from_callback(array.shape, leaf.sharding, lambda index: array[index])
    if not _key_leaf(leaf):
        return data
    key = jax.random.wrap_key_data(data, impl=leaf.dtype._impl)
    return key if key.sharding == leaf.sharding else jax.device_put(key, leaf.sharding)


def _resolve_config(config: Any, metadata: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config to import into: a ConfigDict, a run directory, a config.json or `FILE[:preset]`, or
    (None) the config the file carries."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.copy_and_resolve_references()
        config_lib.validate(config)
        return config
    if config is None:
        text = metadata.get("config")
        if not text:
            raise UserError("the file carries no config; pass the run's config.json")
        with tempfile.TemporaryDirectory() as scratch:  # load() reads a file; out_workdir stays untouched
            path = config_lib.write(ml_collections.ConfigDict(json.loads(text)), scratch)
            return config_lib.load(str(path))
    if Path(config).is_dir():
        config = Path(config) / "config.json"
    return config_lib.load(str(config))


def _check_empty(out_workdir: Path) -> None:
    checkpoints = out_workdir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise UserError(f"{out_workdir} already has checkpoints; choose a new directory")


def import_file(path: str | os.PathLike, config: Any, out_workdir: str | os.PathLike,
                step: int | None = None) -> dict[str, Any]:
    """Make `out_workdir` a run directory holding the train state of the file `path` (written by
    `export`) as an orbax checkpoint, with its config.json.

    `config`: the run's config (a ConfigDict, a run directory, its config.json or `FILE[:preset]`), or
    None for the one the file carries. `step`: the checkpoint step (default: the file's). A whole-state
    file restores every array bit for bit (and this process's data-iterator position when the process
    count is the one saved); a `params_only` file gets a fresh optimizer state (see the module doc).
    UserError when the file's names, shapes or dtypes do not fit the config's train state (naming them),
    when its arrays differ from the checksums it carries, or when `out_workdir` has checkpoints already.
    Returns {"step", "params_only", "arrays"}."""
    from vlm_jax.run.build import Run, ensure_data, make_mesh
    from vlm_jax.train.state import TrainState

    arrays, metadata = read_file(path)
    out_workdir = Path(out_workdir)
    _check_empty(out_workdir)
    config = _resolve_config(config, metadata)
    make_mesh(config)  # a mesh the devices cannot form: an error before any other work
    params_only = bool(metadata["params_only"]) if "params_only" in metadata else "step" not in arrays
    if step is None:
        step = metadata.get("step")
        if step is None:
            if "step" not in arrays:
                raise UserError(f"{path} records no step; pass one")
            step = int(arrays["step"])
    step = int(step)

    ensure_data(config)
    run = Run(config)
    abstract = run.factory.abstract()
    named = [(checkpoint_lib._path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]]
    if params_only:
        named = [(name, leaf) for name, leaf in named if name.split("/", 1)[0] in MODEL_VARIABLES]
    _check_fits(path, arrays, {name: _file_form(leaf) for name, leaf in named})

    filled = {name: _to_device(arrays[name], leaf) for name, leaf in named}
    if params_only:
        params = _subtree(abstract.params, filled, "params")
        batch_stats = _subtree(abstract.batch_stats, filled, "batch_stats")
        shardings = run.factory.shardings
        with jax.set_mesh(run.mesh):
            opt_state = jax.jit(run.tx.init, out_shardings=shardings.opt_state)(params)
        # the key a fresh run of the config starts from (`StateFactory._init_state`: split(key(seed))[1]),
        # without initialising the model
        rng = jax.device_put(jax.random.split(jax.random.key(run.factory.seed))[1], shardings.rng)
        state = TrainState(step=jax.device_put(np.asarray(step, abstract.step.dtype), shardings.step),
                           params=params, opt_state=opt_state, batch_stats=batch_stats, rng=rng)
        data_state = None
    else:
        leaves = [filled[name] for name, _ in named]
        state = jax.tree.unflatten(jax.tree.structure(abstract), leaves)
        data_state = _data_state_for_this_process(metadata.get("data_state") or {})

    saved = metadata.get("checksums")
    if saved:
        now = checkpoint_lib.array_checksums(state)
        bad = sorted(name for name in saved if name in now and now[name] != saved[name])
        if bad:
            raise UserError(f"{path} is damaged: {len(bad)} array(s) differ from the checksums it carries, "
                            f"first {bad[0]}")
    if metadata.get("config_hash") and metadata["config_hash"] != checkpoint_lib.config_hash(config):
        log.info("%s was exported from a run with config hash %s; this config's is %s", path,
                    metadata["config_hash"], checkpoint_lib.config_hash(config))
    _save(out_workdir, config, step, state, data_state)
    log.info("imported %s into %s at step %d", path, out_workdir, step)
    return {"step": step, "params_only": params_only, "arrays": len(named)}


def _subtree(like: Any, filled: Mapping[str, jax.Array], prefix: str) -> Any:
    """The tree `like` (a state's `params` or `batch_stats`) with its leaves taken from `filled`
    ({"<prefix>/<path>": array})."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [filled[f"{prefix}/{checkpoint_lib._path_name(p)}"] for p, _ in paths]
    return jax.tree.unflatten(treedef, leaves)


def _save(out_workdir: Path, config: ml_collections.ConfigDict, step: int, state: Any, data_state: Any,
          metrics: Mapping[str, float] | None = None) -> None:
    """`state` as checkpoint `step` of the run directory `out_workdir`, with its config.json."""
    if jax.process_index() == 0:
        config_lib.write(config, out_workdir)
    writer = checkpoint_lib.Checkpointer.from_config(out_workdir, config.checkpoint, config)  # its retention
    try:
        writer.save(step, state, data_state, metrics=metrics)
    finally:
        writer.close()


# --- reshard -------------------------------------------------------------------------------------------

def reshard(workdir: str | os.PathLike, out_workdir: str | os.PathLike, mesh_shape: Sequence[int],
            step: int | None = None) -> dict[str, Any]:
    """Copy `workdir`'s checkpoint `step` (the latest by default) into the new run directory
    `out_workdir`, its arrays laid out for the same config with `mesh.shape` = `mesh_shape` (e.g. (8, 1, 1)
    -> (1, 8, 1) or (2, 2, 2); -1 takes the rest of the devices), bit for bit; its config.json is the
    source's with the new mesh. The data-iterator state and the step's metrics come along (the former
    only when this process count is the one saved). UserError when the devices cannot form the mesh, the
    step is missing, the arrays differ from their checksums, or `out_workdir` has checkpoints already.
    Returns {"step", "mesh"} (the mesh's resolved shape)."""
    from vlm_jax.run.build import Run, ensure_data, make_mesh

    workdir, out_workdir = Path(workdir), Path(out_workdir)
    if out_workdir.resolve() == workdir.resolve():
        raise UserError("reshard writes a new run directory; out_workdir must differ from workdir")
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir} is not a run directory (no config.json)")
    config = config_lib.load(str(workdir / "config.json"))
    mesh_shape = tuple(int(s) for s in mesh_shape)
    config.mesh.shape = mesh_shape
    config_lib.validate(config)
    mesh = make_mesh(config)
    step_dir, step, meta = _source_step(workdir, step)
    _check_empty(out_workdir)

    ensure_data(config)
    run = Run(config)
    with ocp.StandardCheckpointer() as reader:
        state = reader.restore(step_dir / checkpoint_lib.STATE, run.factory.abstract())
    checkpoint_lib._verify(step, state, meta.get("checksums"))
    data_state = _data_state_for_this_process(_read_data_states(step_dir))
    _save(out_workdir, config, step, state, data_state, meta.get("metrics"))
    log.info("resharded step %d of %s onto mesh %s in %s", step, workdir, dict(mesh.shape), out_workdir)
    return {"step": step, "mesh": tuple(mesh.devices.shape)}
