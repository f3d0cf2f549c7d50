"""Checkpointer: bit-exact round trips (types kept), restore onto another mesh, last-K + best
retention, data-iterator resume, and interrupted saves."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm_jax.errors import TrainingFault, UserError
from vlm_jax.train import checkpoint, optim

REPO = Path(__file__).resolve().parents[2]


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(8, name="dense")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.LayerNorm(name="norm")(x)


def _state(seed=0):
    variables = _Net().init(jax.random.key(seed), jnp.ones((2, 4)))
    params = {"video_encoder": variables["params"], "text_encoder": variables["params"]}
    config = optim.default_optim_config()
    config.update(warmup_steps=1, frozen=["text_encoder"], lr_multipliers={"video_encoder/norm": 0.5})
    tx = optim.make_optimizer(config, params)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    for _ in range(2):  # non-trivial moments and counts
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "batch_stats": variables["batch_stats"],
            "step": jnp.asarray(2, jnp.int32), "rng": jax.random.key(seed + 1),
            "rng_data": jax.random.key_data(jax.random.key(seed + 2)), "epoch": 3}


def _assert_bit_exact(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def _adam(opt_state):
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]


def test_round_trip_is_bit_exact_and_keeps_types(tmp_path):
    state = _state()
    with checkpoint.Checkpointer(tmp_path, config={"seed": 1}) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(2, state, {"next_index": 5})
        assert not ckpt.save(2, state)  # an existing step is not overwritten
        ckpt.wait()
    # a fresh Checkpointer (a restarted run) finds it
    with checkpoint.Checkpointer(tmp_path, config={"seed": 1}) as ckpt:
        assert ckpt.latest_step() == 2
        restored, data_state = ckpt.restore(abstract_state=checkpoint.abstract_of(state))
        meta = ckpt.metadata(2)
    _assert_bit_exact(state, restored)
    assert data_state == {"next_index": 5}
    adams = _adam(restored["opt_state"])  # optax namedtuples come back as such, MaskedNodes included
    assert len(adams) == 2  # the lr*1.0 and lr*0.5 groups
    assert all(jax.tree.leaves(adam.mu["text_encoder"]) == [] for adam in adams)  # frozen: no moments
    assert restored["rng"].dtype == state["rng"].dtype and restored["epoch"] == 3
    assert meta["step"] == 2 and meta["config_hash"] == checkpoint.config_hash({"seed": 1})
    assert (tmp_path / "checkpoints" / "2" / "data" / "process_0-of-1.json").is_file()


_MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vlm_jax.train import checkpoint

    assert jax.device_count() == 8, jax.devices()
    workdir = sys.argv[1]
    state = {"params": {"w": jnp.asarray(np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / np.float32(7)),
                        "b": jnp.arange(32, dtype=jnp.bfloat16)},
             "step": jnp.asarray(9, jnp.int32)}
    mesh42 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    spec = {"params": {"w": P("data", "model"), "b": P("model")}, "step": P()}
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh42, s)), state, spec)
    with checkpoint.Checkpointer(workdir) as ckpt:
        ckpt.save(9, sharded, {"next_index": 1})
        ckpt.wait()
        mesh81 = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "model"))
        on81 = jax.tree.map(lambda s: NamedSharding(mesh81, s), spec)
        r81, _ = ckpt.restore(abstract_state=checkpoint.abstract_of(state, on81))
        r1, _ = ckpt.restore(9, checkpoint.abstract_of(state, jax.sharding.SingleDeviceSharding(jax.devices()[3])))
    out = {}
    for name, restored, want in (("8x1", r81, on81), ("single", r1, None)):
        for key in ("w", "b"):
            got = restored["params"][key]
            assert np.array_equal(np.asarray(got), np.asarray(state["params"][key])), (name, key)
            assert got.dtype == state["params"][key].dtype
        if want is not None:
            assert restored["params"]["w"].sharding == want["params"]["w"], restored["params"]["w"].sharding
            assert len(restored["params"]["w"].addressable_shards) == 8
            assert restored["params"]["w"].addressable_shards[0].data.shape == (8, 32)
        else:
            assert restored["params"]["w"].devices() == {jax.devices()[3]}
        out[name] = "ok"
    print(json.dumps(out))
""")


def test_restore_onto_a_different_mesh(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"8x1": "ok", "single": "ok"}
    # and the 8-device checkpoint restores in this 1-device process
    abstract = {"params": {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32),
                           "b": jax.ShapeDtypeStruct((32,), jnp.bfloat16)},
                "step": jax.ShapeDtypeStruct((), jnp.int32)}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        restored, data_state = ckpt.restore(abstract_state=checkpoint.abstract_of(abstract, sharding))
    expected = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / np.float32(7)
    np.testing.assert_array_equal(restored["params"]["w"], expected)
    assert int(restored["step"]) == 9 and data_state == {"next_index": 1}


def test_restore_params_takes_some_modules_and_refuses_absent_ones(tmp_path):
    state = _state()
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, state)
        abstract = checkpoint.abstract_of(state["params"])
        restored = ckpt.restore_params(None, {"video_encoder": abstract["video_encoder"]})
        _assert_bit_exact(restored, {"video_encoder": state["params"]["video_encoder"]})
        with pytest.raises(UserError, match="has no parameters for caption_decoder"):
            ckpt.restore_params(2, {"video_encoder": abstract["video_encoder"],
                                    "caption_decoder": abstract["text_encoder"]})


def _state_with_data(seed):
    """`_state` plus an array big enough that its bytes are most of the step's largest data file."""
    state = _state(seed)
    big = {"data": jax.random.normal(jax.random.key(seed), (50_000,))}
    return {**state, "params": {**state["params"], "big": big}}


def _largest_array_file(step_dir):
    return max((step_dir / checkpoint.STATE).glob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(step_dir):
    """Bytes flipped in the middle of the array data: orbax still decodes this, into wrong numbers."""
    path = _largest_array_file(step_dir)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated": _truncate,
    "zero-length": lambda step_dir: _largest_array_file(step_dir).write_bytes(b""),
    "garbled": _garble,
    "missing": lambda step_dir: _largest_array_file(step_dir).unlink(),
    "garbled meta": lambda step_dir: (step_dir / checkpoint.META / "metadata").write_text("{not json"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_latest_step_is_moved_aside_and_the_run_resumes_from_the_previous(tmp_path, corruption, caplog):
    states = {step: _state_with_data(seed=step) for step in (1, 2, 3)}
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state, {"next_index": step})
    CORRUPTIONS[corruption](tmp_path / "checkpoints" / "3")
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        step, restored, data_state = ckpt.restore_latest_valid(checkpoint.abstract_of(states[3]))
        assert ckpt.all_steps() == [1, 2]
    assert step == 2 and data_state == {"next_index": 2}
    _assert_bit_exact(states[2], restored)
    assert sorted(p.name for p in (tmp_path / "checkpoints_corrupt").iterdir()) == ["3"]
    assert (tmp_path / "checkpoints_corrupt" / "3" / checkpoint.STATE).is_dir()  # kept, not deleted
    warning, = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "does not restore" in r.getMessage()]
    assert warning.startswith("checkpoint step 3 does not restore (") and "resuming from step 2" in warning


def test_garbled_bytes_are_caught_by_the_checksums(tmp_path):
    state = _state_with_data(0)
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
    _garble(tmp_path / "checkpoints" / "1")
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(UserError, match=r"checkpoint step 1 is corrupt: \d+ array\(s\) differ from their checksums"):
            ckpt.restore(1, checkpoint.abstract_of(state))
        with pytest.raises(UserError, match="is corrupt"):
            ckpt.restore_params(1, {"big": checkpoint.abstract_of(state["params"]["big"])})
        # modules whose bytes are intact still load
        intact = ckpt.restore_params(1, {"video_encoder": checkpoint.abstract_of(state["params"]["video_encoder"])})
        _assert_bit_exact(intact["video_encoder"], state["params"]["video_encoder"])


def test_a_full_disk_is_one_clear_error_and_loses_no_committed_step(tmp_path, monkeypatch):
    """A write that fails mid-save (here the data-state item, with ENOSPC) names the step, the directory
    and the cause; with max_to_keep=1 the only committed step survives, and the next run resumes from it."""
    import errno

    state = _state_with_data(0)
    ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=1)
    ckpt.save(1, state, {"next_index": 1})
    ckpt.wait()

    def disk_full(data_state):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "_encode_data_state", disk_full)
    message = (r"checkpoint step 2 could not be written to .*/checkpoints: No space left on device; "
               r"the committed steps \[1\] are intact")
    with pytest.raises(TrainingFault, match=message):
        ckpt.save(2, _state_with_data(1), {"next_index": 2})
        ckpt.wait()
    monkeypatch.undo()
    ckpt.close()
    with checkpoint.Checkpointer(tmp_path) as reopened:
        step, restored, data_state = reopened.restore_latest_valid(checkpoint.abstract_of(state))
    assert step == 1 and data_state == {"next_index": 1}
    _assert_bit_exact(state, restored)


def test_a_model_that_fits_no_step_moves_nothing(tmp_path):
    """Every step failing means the config changed (or all are damaged): an error, and the steps stay."""
    state = _state()
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state)
    other = {**state, "params": {**state["params"], "video_encoder": {"w": jnp.zeros((3, 3))}}}
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(UserError, match="no checkpoint in .* restores onto this config; step 2: "):
            ckpt.restore_latest_valid(checkpoint.abstract_of(other))
        assert ckpt.all_steps() == [1, 2]
    assert not (tmp_path / "checkpoints_corrupt").exists()
    with checkpoint.Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.restore_latest_valid(checkpoint.abstract_of(state)) is None


@pytest.mark.parametrize("mode", ["min", "max"])
def test_keeps_last_k_plus_best(tmp_path, mode):
    state = {"w": jnp.zeros((4,))}
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0}
    sign = 1 if mode == "min" else -1
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2, best_metric="val/loss", best_mode=mode,
                                 async_save=False) as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, state, metrics={"val/loss": sign * loss, "other": 0.0})
        ckpt.save(6, state)  # a preemption save without metrics: kept by recency only
        ckpt.save(7, state, metrics={"other": 1.0})  # missing the metric: ranks worst
        ckpt.wait()
        assert ckpt.all_steps() == [2, 6, 7]
        assert ckpt.best_step() == 2
        ckpt.save(8, state, metrics={"val/loss": sign * 0.5})
        ckpt.wait()
        assert ckpt.all_steps() == [7, 8]  # 8 is both among the last two and the best
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [7, 8]
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2, best_metric="val/loss", best_mode=mode) as ckpt:
        assert ckpt.best_step() == 8 and ckpt.latest_step() == 8


def _batches(it, n):
    return [next(it).tolist() for _ in range(n)]


def test_data_state_resumes_the_same_batches(tmp_path):
    dataset = grain.MapDataset.range(100).shuffle(seed=7).batch(4).to_iter_dataset()
    it = iter(dataset)
    _batches(it, 5)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, {"w": jnp.ones(3)}, it.get_state())
        expected = _batches(it, 6)
        ckpt.wait()
        _, data_state = ckpt.restore(abstract_state={"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
        # bytes states (grain DataLoader iterators) round-trip too
        ckpt.save(6, {"w": jnp.ones(3)}, b"\x00\xffstate")
        assert ckpt.restore(6, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})[1] == b"\x00\xffstate"
        ckpt.save(7, {"w": jnp.ones(3)})  # no data state
        assert ckpt.restore(7, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})[1] is None
    fresh = iter(dataset)
    fresh.set_state(data_state)
    assert _batches(fresh, 6) == expected


def test_interrupted_save_is_not_reported(tmp_path):
    state = {"w": jnp.arange(10.0)}
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    # what a save killed before its commit leaves behind (orbax 0.12.8 naming: "<step>.orbax-checkpoint-tmp")
    tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "partial").write_bytes(b"\x00" * 10)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
        restored, _ = ckpt.restore(abstract_state=checkpoint.abstract_of(state))
        np.testing.assert_array_equal(restored["w"], state["w"])
        assert ckpt.save(2, {"w": state["w"] + 1})
        ckpt.wait()
        assert ckpt.latest_step() == 2
    assert not tmp.exists()  # leftovers are deleted (in the background) when a Checkpointer opens the directory


_KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from vlm_jax.train import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.zeros((1000, 1000))})
    ckpt.wait()
    ckpt.save(2, {"w": jnp.ones((1000, 1000))})  # returns once the arrays are on the host
    os._exit(0)  # killed while the write runs in the background
""")


def test_killed_async_save_leaves_a_restorable_latest(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        latest = ckpt.latest_step()
        assert latest in (1, 2), names  # 2 only if its commit won the race against the kill
        if "2.orbax-checkpoint-tmp" in names:
            assert latest == 1
        restored, _ = ckpt.restore(abstract_state={"w": jax.ShapeDtypeStruct((1000, 1000), jnp.float32)})
    np.testing.assert_array_equal(restored["w"], np.full((1000, 1000), latest - 1, np.float32))


_MULTIHOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vlm_jax.train import checkpoint

    full = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    mesh42 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    w = jax.make_array_from_callback(full.shape, NamedSharding(mesh42, P("data", "model")), lambda i: full[i])
    mesh81 = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "model"))
    target = {"w": jax.ShapeDtypeStruct(full.shape, full.dtype, sharding=NamedSharding(mesh81, P("data")))}
    with checkpoint.Checkpointer(workdir) as ckpt:
        ckpt.save(3, {"w": w}, {"next_index": 10 + pid})
        ckpt.wait()
        restored, data_state = ckpt.restore(abstract_state=target)
    gathered = multihost_utils.process_allgather(restored["w"], tiled=True)
    print(json.dumps({"data": data_state, "exact": bool(np.array_equal(np.asarray(gathered), full))}))
    jax.distributed.shutdown()
""")


def test_two_processes_keep_their_own_data_state(tmp_path):
    import portpicker
    port = portpicker.pick_unused_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", _MULTIHOST_SCRIPT, str(pid), str(port), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for pid in range(2)]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert outputs == [{"data": {"next_index": 10}, "exact": True}, {"data": {"next_index": 11}, "exact": True}]
    data_dir = tmp_path / "checkpoints" / "3" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= {p.name for p in data_dir.iterdir()}
