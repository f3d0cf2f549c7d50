"""Checkpoints under `workdir/checkpoints/<step>/` (orbax), atomic, async, resumable bit-exactly.

One step directory holds three items:
- `state/`: the train-state pytree (params, opt_state, step, rng keys, batch_stats, ...) through
  `ocp.args.StandardSave`; restored onto any mesh through an abstract target (`abstract_of`);
- `data/process_<i>-of-<n>.json`: each process's grain iterator state (`iterator.get_state()`; a dict
  is stored as JSON, bytes as base64), written by every process, since each reads its own shard;
- `meta/metadata`: JSON with the step, the config hash, the metrics and the save time.

Atomicity: orbax writes `<step>.orbax-checkpoint-tmp`, then renames it to `<step>` once every item is
written (and writes `commit_success.txt` inside). A save killed half-way leaves only the tmp directory,
which `all_steps()` / `latest_step()` never report, and which is deleted when the next Checkpointer
opens the directory (`cleanup_tmp_directories=True`).

Integrity: `meta` also holds a checksum of every array of the state (`array_checksums`), and `restore`
recomputes them: orbax detects truncated or missing files but returns garbled bytes that still decode
as data. `restore_latest_valid` (how a run resumes) falls back past damaged steps to the newest good one
and moves the damaged ones to `workdir/checkpoints_corrupt/`.

Retention: the last `max_to_keep` steps, plus the `keep_best` best by `best_metric` (`best_mode` "min"
or "max"), through orbax's `preservation_policy = AnyPreservationPolicy([LatestN, BestN])`. The legacy
options (`max_to_keep` with `best_fn`) cannot express this: with a `best_fn` they keep only the best
`max_to_keep` and drop the latest step when its metric is poor, which breaks resuming. Steps saved
without metrics (preemption saves between evals) are kept by the LatestN rule alone, unless
`keep_checkpoints_without_metrics=True`, which keeps them forever. A step missing the metric key ranks
worst. `best_fn` / `best_mode` are still passed to the manager, so that it stores metrics and
`best_step()` works.

Saves are asynchronous: `save` returns once device arrays are copied to host memory (the caller may
then donate or overwrite its buffers); the write happens in the background. `wait()` blocks until it is
committed, and a new `save` waits for the previous one first.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from vlm_jax.errors import TrainingFault, UserError

log = logging.getLogger(__name__)

STATE, DATA, META = "state", "data", "meta"
_BYTES = "__bytes_base64__"


# --- per-process data-iterator state ------------------------------------------------------------------

def _data_filename() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _encode_data_state(state: Any) -> str:
    if isinstance(state, (bytes, bytearray)):
        state = {_BYTES: base64.b64encode(bytes(state)).decode("ascii")}
    return json.dumps(state, sort_keys=True)


def _decode_data_state(text: str) -> Any:
    state = json.loads(text)
    if isinstance(state, dict) and set(state) == {_BYTES}:
        return base64.b64decode(state[_BYTES])
    return state


class DataStateHandler(ocp.CheckpointHandler):
    """Writes this process's data-iterator state to `process_<i>-of-<n>.json` (like grain's own handler,
    but it takes the state, not the iterator, so the state is captured at `save` time)."""

    def save(self, directory: epath.Path, args: "DataStateSave"):
        (directory / _data_filename()).write_text(_encode_data_state(args.item))

    def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
        path = directory / _data_filename()
        if not path.exists():
            others = sorted(p.name for p in directory.iterdir())
            log.warning("no data-iterator state for this process at %s (found %s): the process count changed "
                        "since the save; the data pipeline restarts", path, others)
            return None
        return _decode_data_state(path.read_text())

    def metadata(self, directory: epath.Path) -> Any:
        return None

    def structure(self, directory: epath.Path) -> Any:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


# --- helpers ------------------------------------------------------------------------------------------

def config_hash(config: Any) -> str:
    """A short, stable hash of a config (ConfigDict or mapping): sha256 of its sorted JSON."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    text = json.dumps(config, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _path_name(path: tuple) -> str:
    """A leaf's path as `params/video_encoder/...`, the same for a TrainState and for the dict that
    `restore_params` reads (attribute, key and index entries alike)."""
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


@jax.jit
def _leaf_checksums(leaves: list[jax.Array]) -> list[jax.Array]:
    """One uint32 per array: the sum of its bits (as unsigned words) times position-dependent odd weights,
    modulo 2**32. Modular sums do not depend on the order of summation, so the value is the same for any
    sharding; a changed word or two swapped ones change it."""
    out = []
    for x in leaves:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        words = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32))
        words = words.reshape(-1).astype(jnp.uint32)
        weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
        out.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return out


def array_checksums(tree: Any) -> dict[str, int]:
    """{leaf path: checksum} of every array in `tree`, computed where the arrays live (one small program):
    what a checkpoint stores in its `meta`, and what `restore` recomputes to catch corrupted bytes that
    still decode (orbax does not checksum array data)."""
    named = [(_path_name(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
             if isinstance(leaf, jax.Array)]
    sums = jax.device_get(_leaf_checksums([leaf for _, leaf in named]))
    return {name: int(value) for (name, _), value in zip(named, sums)}


def _verify(step: int, restored: Any, saved: Mapping[str, int] | None, prefix: str = "") -> None:
    """Raise when the restored arrays' checksums differ from those saved with the step (`prefix`: where
    `restored` sits in the saved state)."""
    if saved is None:  # saved before checkpoints carried checksums
        return
    now = array_checksums(restored)
    bad = sorted(name for name, value in now.items() if saved.get(prefix + name, value) != value)
    if bad:
        raise UserError(f"checkpoint step {step} is corrupt: {len(bad)} array(s) differ from their checksums, "
                        f"first {prefix + bad[0]}")


def abstract_of(tree: Any, shardings: Any = None) -> Any:
    """The restore target for a tree like `tree`: arrays become `jax.ShapeDtypeStruct`s carrying
    `shardings` (a matching tree of `jax.sharding.Sharding`, or one Sharding for every array), or each
    array's own sharding when `shardings` is None. Non-array leaves (Python ints, ...) stay as they are;
    optax/flax node types are kept, so the restored tree has the same types as `tree`."""
    is_array = lambda x: isinstance(x, (jax.Array, jax.ShapeDtypeStruct))

    def one(x, sharding):
        if not is_array(x):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding)

    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def default_checkpoint_config() -> ml_collections.ConfigDict:
    """A `checkpoint` config block for `Checkpointer.from_config` (best_metric "" = none)."""
    return ml_collections.ConfigDict({
        "max_to_keep": 3,
        "best_metric": "",
        "best_mode": "max",
        "keep_best": 1,
        "keep_checkpoints_without_metrics": False,
        "async_save": True,
        "every_steps": 500,  # 0: only at the end (and at evaluations, preemption)
    })


# --- the checkpointer ---------------------------------------------------------------------------------

class Checkpointer:
    """Save and restore (train state, data-iterator state) under `workdir/checkpoints`.

    >>> ckpt = Checkpointer(workdir, max_to_keep=3, best_metric="val/retrieval/t2v_R@1", best_mode="max")
    >>> ckpt.save(step, state, train_iter.get_state(), metrics={"val/retrieval/t2v_R@1": 41.0})
    >>> state, data_state = ckpt.restore(abstract_state=abstract_of(state_shapes, shardings))
    >>> train_iter.set_state(data_state); ckpt.close()
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int | None = 3, best_metric: str | None = None,
                 best_mode: str = "max", keep_best: int = 1, keep_checkpoints_without_metrics: bool = False,
                 async_save: bool = True, config: Any = None):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max' (got {best_mode!r})")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None (got {max_to_keep})")
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.best_metric = best_metric or None
        self.best_mode = best_mode
        self.config_hash = config_hash(config) if config is not None else None

        policies = [checkpoint_managers.LatestN(n=max_to_keep)]
        best_fn = None
        if self.best_metric:
            worst = float("inf") if best_mode == "min" else float("-inf")
            metric = self.best_metric
            best_fn = lambda metrics: float(metrics.get(metric, worst)) if metrics else worst
            policies.append(checkpoint_managers.BestN(
                get_metric_fn=best_fn, reverse=(best_mode == "min"), n=keep_best,
                keep_checkpoints_without_metrics=keep_checkpoints_without_metrics))
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=best_fn,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=keep_checkpoints_without_metrics,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step of the latest save started

    @classmethod
    def from_config(cls, workdir: str | os.PathLike, checkpoint_config: Any, config: Any = None) -> "Checkpointer":
        c = checkpoint_config
        return cls(workdir, max_to_keep=c["max_to_keep"], best_metric=c["best_metric"] or None,
                   best_mode=c["best_mode"], keep_best=c["keep_best"],
                   keep_checkpoints_without_metrics=c["keep_checkpoints_without_metrics"],
                   async_save=c["async_save"], config=config)

    # saving

    def save(self, step: int, state: Any, data_state: Any = None, metrics: Mapping[str, float] | None = None,
             *, force: bool = True) -> bool:
        """Start saving `state` and `data_state` as `step` (asynchronous; see `wait`). `metrics` (a flat map
        of name -> number) ranks the step for best-checkpoint retention. Returns whether a save started
        (False when `step` is already saved)."""
        step = int(step)
        if step in self.all_steps():
            log.info("checkpoint step %d exists; not saving it again", step)
            return False
        metrics = {k: float(v) for k, v in metrics.items()} if metrics else None
        meta = {"step": step, "config_hash": self.config_hash, "metrics": metrics, "time": time.time(),
                "process_count": jax.process_count(), "has_data_state": data_state is not None,
                "checksums": array_checksums(state)}
        items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
        if data_state is not None:
            items[DATA] = DataStateSave(data_state)
        with self._write_errors(step):
            self._pending = step
            return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

    def wait(self) -> None:
        """Block until every started save is committed (and old steps are deleted)."""
        with self._write_errors(self._pending):
            self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        """A failed write (disk full, no permission) as one line. Nothing committed is lost: the step was
        being written to a temporary directory, and old steps are deleted only after a commit."""
        try:
            yield
        except OSError as error:
            raise TrainingFault(f"checkpoint step {step} could not be written to {self.directory}: "
                                f"{error.strerror or error}; the committed steps {self.all_steps()} are intact"
                                ) from error

    # querying

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The best step by `best_metric` (the latest when no metric is tracked)."""
        return self._manager.best_step()

    def reload(self) -> None:
        """Re-read the directory (after another process or run wrote to it)."""
        self._manager.reload()

    def metadata(self, step: int | None = None) -> dict:
        """The `meta` JSON of `step` (the latest by default)."""
        step = self._resolve(step)
        return self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]

    # restoring

    def restore(self, step: int | None = None, abstract_state: Any = None) -> tuple[Any, Any]:
        """(state, data_state) of `step` (the latest by default). `abstract_state` is the target: a tree of
        `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (see `abstract_of`), so arrays land on its
        shardings, which may be a different mesh from the one saved; its node types (optax states, flax
        dataclasses) are the ones returned. With None, arrays come back with the saved shardings, which
        needs the same devices. `data_state` is None when none was saved for this process. Raises
        UserError when the arrays differ from the checksums saved with them."""
        step = self._resolve(step)
        self.wait()
        step_dir = self.directory / str(step)
        items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
        has_data = (step_dir / DATA).is_dir()
        if has_data:
            items[DATA] = DataStateRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        meta = restored[META]
        _verify(step, restored[STATE], meta.get("checksums"))
        if self.config_hash and meta.get("config_hash") and meta["config_hash"] != self.config_hash:
            log.warning("restoring step %d saved with config hash %s; the current config's is %s",
                        step, meta["config_hash"], self.config_hash)
        return restored[STATE], (restored[DATA] if has_data else None)

    def restore_latest_valid(self, abstract_state: Any) -> tuple[int, Any, Any] | None:
        """(step, state, data_state) of the newest step that restores onto `abstract_state` and matches its
        checksums; None when there is no checkpoint.

        Newer steps that fail while an older one restores are damaged (the same target fits the older
        one): each is moved to `workdir/checkpoints_corrupt/` with a warning that names what was wrong,
        never deleted. When no step restores, the likelier cause is a config whose model does not fit
        the checkpoints, so nothing is moved and the latest step's error is raised."""
        failures: dict[int, str] = {}
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data_state = self.restore(step, abstract_state)
            except Exception as error:  # judged below: damage if an older step restores, else a mismatch
                failures[step] = " ".join(str(error).split())[:300] or type(error).__name__
                continue
            for bad, why in failures.items():
                log.warning("checkpoint step %d does not restore (%s); moving it to %s and resuming from "
                            "step %d", bad, why, self._move_aside(bad), step)
            if failures:
                self.reload()
            return step, state, data_state
        if failures:
            latest = max(failures)
            raise UserError(f"no checkpoint in {self.directory} restores onto this config; step {latest}: "
                            f"{failures[latest]}")
        return None

    def _move_aside(self, step: int) -> Path:
        """Move a damaged step out of the manager's sight, keeping its files for inspection."""
        target = self.directory.parent / "checkpoints_corrupt" / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            suffix = 1
            while target.exists():
                target, suffix = target.with_name(f"{step}.{suffix}"), suffix + 1
            os.rename(self.directory / str(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
        return target

    def restore_params(self, step: int | None, abstract_params: Mapping[str, Any]) -> dict[str, Any]:
        """Only the parameter modules in `abstract_params` ({top-level module: abstract tree}, see
        `abstract_of`) of `step` (the latest by default): how finetuning starts from part of a pretraining
        run, whose optimizer state and other modules may not fit the new model."""
        step = self._resolve(step)
        self.wait()
        target = {"params": dict(abstract_params)}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        with ocp.PyTreeCheckpointer() as reader:
            params = reader.restore(self.directory / str(step) / STATE, args=args)["params"]
        # a partial restore hands back the abstract leaves of whatever the checkpoint lacks
        absent = sorted(name for name, tree in params.items()
                        if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(tree)))
        if absent:
            raise UserError(f"checkpoint step {step} in {self.directory} has no parameters for {', '.join(absent)}")
        _verify(step, params, self.metadata(step).get("checksums"), prefix="params/")
        return params

    def _resolve(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        elif int(step) not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"steps: {self.all_steps()}")
        return int(step)

    def close(self) -> None:
        """Wait for pending saves and release the manager's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
