"""Building a run: from its config (`Run`: mesh, model, optimizer, jitted steps, data spec) or from its
workdir (`load_run`: config.json and a checkpoint), and filling a fresh state from pretrained weights.
Training, evaluation, the applications and the benchmarks all start here.

    run = Run(config)                                   # config from `vlm_jax.config.load`
    run, state, step = load_run("runs/pretrain")        # config.json + the latest checkpoint
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax import config as config_lib
from vlm_jax import parallel, pretrained
from vlm_jax.data import builders, clip_transform, features, pipeline
from vlm_jax.errors import UserError
from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.train import optim, state as state_lib, steps
from vlm_jax.train.state import TrainState

log = logging.getLogger(__name__)
TOWER_MODULES = ("text_encoder", "video_encoder")  # init_from keys naming a real pretrained tower


def make_mesh(config: Any) -> Mesh:
    """The config's mesh over every device of every process; UserError when it does not fit the devices or
    the batch does not split over its data axes."""
    mesh = parallel.make_mesh(config.mesh.shape, config.mesh.axes)
    if config.train.batch_size % parallel.batch_shards(mesh):
        raise UserError(f"train.batch_size={config.train.batch_size} is not a multiple of the mesh's batch "
                        f"shards (data x fsdp = {parallel.batch_shards(mesh)})")
    return mesh


class Run:
    """Everything a run builds from its config: mesh, model, optimizer, jitted steps, data spec.

    Evaluators get the `Run` so they can reuse its mesh, model and shardings.
    """

    def __init__(self, config: Any):
        self.config = config
        self.settings = steps.Settings.from_config(config)
        self.mesh = make_mesh(config)
        self.rules = parallel.rules_for(self.mesh, config.mesh.rules)
        self.batch_sharding = parallel.batch_sharding(self.mesh)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.spec = pipeline.Spec.from_config(config)
        dataset = builders.open_dataset(self.spec.dataset_path)
        self.vocabulary = clip_transform.Vocabulary.of(dataset)
        self.audio_samples = int(dataset.info.features["audio"].shape[0])
        self.model = state_lib.make_model(config, len(self.vocabulary.answers))
        optim_config = config.optim.copy_and_resolve_references()
        accumulation = int(optim_config.grad_accum_steps)
        if int(optim_config.total_steps) <= 0:  # -1: derived from the run length
            optim_config.total_steps = max(1, config.train.num_steps // accumulation)
            if optim_config.warmup_steps >= optim_config.total_steps:  # a preset's warmup, a shortened run
                log.warning("optim.warmup_steps (%d) is not below the run's %d optimizer updates: warming up over "
                            "%d", optim_config.warmup_steps, optim_config.total_steps, optim_config.total_steps - 1)
                optim_config.warmup_steps = optim_config.total_steps - 1
        self.schedule = optim.schedule(optim_config)
        self.accumulation = accumulation

        def make_tx(params):
            untouched = sorted(set(params) - steps.trained_modules(self.settings))
            frozen = list(optim_config.frozen) + [m for m in untouched if m not in optim_config.frozen]
            log.info("frozen (given and untouched by the %s losses): %s", self.settings.task, frozen)
            return optim.make_optimizer({**optim_config.to_dict(), "frozen": frozen}, params)

        self.factory = state_lib.StateFactory(self.model, make_tx, config, self.mesh, self.rules, self.audio_samples)
        self.tx = self.factory.tx
        state_shardings = self.factory.shardings
        batch = self.batch_sharding
        self.train_step = jax.jit(steps.make_train_step(self.model, self.tx, self.settings),
                                  in_shardings=(state_shardings, batch), out_shardings=(state_shardings, self.replicated),
                                  donate_argnums=0)
        self.eval_step = jax.jit(steps.make_eval_step(self.model, self.settings),
                                 in_shardings=(state_shardings, batch), out_shardings=self.replicated)

    def mesh_context(self) -> contextlib.ExitStack:
        """Set the mesh and the logical rules for tracing and running the steps."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def to_device(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return parallel.to_global(dict(host_batch), self.mesh)

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """This process's evaluation batches of a split: at most `eval.max_batches` (all when <= 0)."""
        limit = int(self.config.eval.max_batches)
        batches = iter(pipeline.eval_dataset(self.spec, split))
        return itertools.islice(batches, limit) if limit > 0 else batches


def ensure_data(config: Any) -> None:
    """Build the configured data set if missing: process 0 builds, the others wait."""
    request = features.BuildRequest.from_config(config)
    if jax.process_index() == 0 and not builders.dataset_dir(request).is_dir():
        log.info("building %s (%s) into %s", request.name, request.size, request.data_dir)
        builders.build(request)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vlm_jax data built")


def load_run(workdir: str | Path, step: int | None = None,
             overrides: Iterable[str] = ()) -> tuple[Run, TrainState, int]:
    """The run's `Run` (from its config.json, with overrides such as `eval.max_batches=2`) and its state at
    `step` (default: the latest checkpoint), placed on this machine's devices."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir} is not a run directory (no config.json)")
    config = config_lib.load(str(workdir / "config.json"))  # with the defaults of keys added since
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    ensure_data(config)
    run = Run(config)
    checkpointer = checkpoint_lib.Checkpointer(workdir, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else int(step)
        if step is None:
            raise UserError(f"{workdir} has no checkpoint yet")
        if step not in checkpointer.all_steps():
            raise UserError(f"{workdir} has no checkpoint for step {step}; it has {checkpointer.all_steps()}")
        state, _ = checkpointer.restore(step, run.factory.abstract())
    finally:
        checkpointer.close()
    log.info("loaded %s at step %d", workdir, step)
    return run, state, step


def load_tower(state: TrainState, module: str, name: str) -> TrainState:
    """Replace one encoder's variables by a real pretrained tower's (`vlm_jax.pretrained.tower_variables`),
    placed on the shardings of the fresh state (every process builds its own shards from the same numpy)."""
    collections = {"params": state.params[module]}
    if module in state.batch_stats:
        collections["batch_stats"] = state.batch_stats[module]
    loaded = pretrained.tower_variables(name, collections)
    placed = jax.tree.map(lambda new, old: jax.make_array_from_callback(old.shape, old.sharding,
                                                                        lambda index: new.astype(old.dtype)[index]),
                          loaded, collections)
    log.info("initialised %s from the pretrained %s", module, name)
    batch_stats = {**state.batch_stats, module: placed["batch_stats"]} if "batch_stats" in placed else state.batch_stats
    return state.replace(params={**state.params, module: placed["params"]}, batch_stats=batch_stats)


def load_pretrained(run: Run, state: TrainState, init_from: Any) -> TrainState:
    """Copy parameters (all, or the modules `init_from.include` names) from another run's checkpoint."""
    source = Path(init_from.workdir)
    if not (source / "checkpoints").is_dir():
        raise UserError(f"init_from.workdir {source} has no checkpoints/ directory")
    include = [str(p).strip("/") for p in init_from.include] or sorted(state.params)
    if not run.config.model.audio.name and "audio_encoder" in include:  # a finetuning config's default list
        log.info("audio is off: init_from.include's audio_encoder is skipped")
        include.remove("audio_encoder")
    missing = [p for p in include if p not in state.params]
    if missing:
        raise UserError(f"init_from.include names {missing}, not top-level modules of this model: "
                        f"{', '.join(sorted(state.params))}")
    target = {name: checkpoint_lib.abstract_of(state.params[name]) for name in include}
    reader = checkpoint_lib.Checkpointer(source, async_save=False)
    try:
        step = int(init_from.step) if int(init_from.step) >= 0 else None
        loaded = reader.restore_params(step, target)
    finally:
        reader.close()
    log.info("initialised %s from %s", ", ".join(include), source)
    return state.replace(params={**state.params, **loaded})
