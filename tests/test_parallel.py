"""The mesh, the logical-axis rules and sharded init.

Pure checks run in-process (one CPU device, abstract meshes). The multi-device checks need 8 devices,
which must be configured before jax starts, so they run in subprocesses of this file run as a script:
`python tests/test_parallel.py` does every 8-device check and prints one JSON object the tests assert on
(started with the module's first test so it overlaps the in-process ones); `--process I --port P` is one
of two processes x 4 devices; `--equivalence` (slow) compares sharded forward/backward with one device.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from vlm_jax import parallel
from vlm_jax.errors import UserError
from vlm_jax.models import fusion, layers, vlm

REPO = Path(__file__).resolve().parent.parent
NUM_ANSWERS = 29


def rngs() -> dict:
    """A function, not a constant: creating keys starts the backend, which the multi-process script must
    not do before `jax.distributed.initialize`."""
    return {"params": jax.random.key(0), "dropout": jax.random.key(1), "masking": jax.random.key(2)}


# ------------------------------------------------------------------ shared builders

def make_model(video="vivit", text="bert", audio="audio_transformer", fusion_name="cross_attention",
               caption="transformer", **video_kw):
    config = vlm.model_config("tiny")
    config.video.name, config.text.name, config.audio.name, config.fusion.name = video, text, audio, fusion_name
    config.caption.name = caption
    for key, value in video_kw.items():
        config.video[video][key] = value
    return vlm.VLM(ml_collections.FrozenConfigDict(config), num_answers=NUM_ANSWERS)


def make_batch(batch_size=2, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch_size, 12), np.int32)
    mask[1:, 7:] = 0
    return {
        "video": rng.integers(0, 256, (batch_size, 8, 32, 32, 3)).astype(np.uint8),
        "audio_wave": rng.uniform(-0.5, 0.5, (batch_size, 8000)).astype(np.float32),
        "caption": (rng.integers(1000, 2000, (batch_size, 12)) * mask).astype(np.int32),
        "caption_mask": mask,
        "question": rng.integers(1000, 2000, (batch_size, 10)).astype(np.int32),
        "question_mask": np.ones((batch_size, 10), np.int32),
    }


def init_fn(model):
    return lambda rngs, batch: model.init(rngs, **batch)


class OddModel(nn.Module):
    """Small, fast to compile, with dimensions the mesh does not divide (vocab 15, width 12, mlp 6)."""
    vocab: int = 15
    width: int = 12
    mlp: int = 6

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.width, embedding_init=layers.logical(nn.initializers.normal(1.0),
                                                                           ("vocab", "embed")))(ids)
        x = layers.Mlp(self.mlp, name="mlp")(x)
        x = layers.layer_norm(dtype=jnp.float32, param_dtype=jnp.float32)(x)
        return layers.dense(self.vocab, ("embed", "vocab"), dtype=jnp.float32, param_dtype=jnp.float32,
                            name="logits")(x)


def abstract_mesh(shape):
    return AbstractMesh(tuple(shape), parallel.AXES, axis_types=(AxisType.Auto,) * 3)


def per_device_bytes(abstract, shardings) -> int:
    shapes = nn.meta.unbox(abstract)
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
               for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(shapes)))


# ------------------------------------------------------------------ in-process (pure) checks

def test_resolve_shape():
    assert parallel.resolve_shape((8, 1, 1), 8) == (8, 1, 1)
    assert parallel.resolve_shape((-1, 2, 1), 8) == (4, 2, 1)
    assert parallel.resolve_shape((-1, 1, 1), 1) == (1, 1, 1)
    for shape, message in [((3, 1, 1), r"mesh.shape \(3, 1, 1\) uses 3 of the 8 devices"),
                           ((2, 8, 1), r"mesh.shape \(2, 8, 1\) asks for 16 devices but only 8 exist"),
                           ((-1, 3, 1), r"mesh.shape \(-1, 3, 1\).*does not divide"),
                           ((-1, -1, 1), "more than one -1"), ((0, 8, 1), "positive")]:
        with pytest.raises(UserError, match=message):
            parallel.resolve_shape(shape, 8)


def test_make_mesh_errors_on_one_device():
    with pytest.raises(UserError, match="mesh.shape"):
        parallel.make_mesh((2, 1, 1))
    with pytest.raises(UserError, match="mesh.axes"):
        parallel.make_mesh((1, 1), ("data", "fsdp", "tensor"))
    with pytest.raises(UserError, match="mesh.axes"):
        parallel.make_mesh((1, 1, 1), ("data", "data", "tensor"))
    mesh = parallel.make_mesh((-1, 1, 1))
    assert dict(mesh.shape) == {"data": len(jax.devices()), "fsdp": 1, "tensor": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_rules_name_each_logical_axis_once_and_only_mesh_axes():
    names = [name for name, _ in parallel.DEFAULT_RULES]
    assert len(names) == len(set(names))
    targets = {a for _, t in parallel.DEFAULT_RULES for a in parallel._as_tuple(t)}
    assert targets <= set(parallel.AXES)
    with pytest.raises(UserError, match="'model'"):
        parallel.check_rules(jax.sharding.AbstractMesh((1,), ("data",)), (("embed", "model"),))


# Every video encoder, every fusion, both caption decoders, BoW text, audio off, the CNN2D temporal transformer
# and a scanned factorised ViViT, so that every logical name in vlm_jax.models is exercised.
VARIANTS = ([dict(video="vivit"), dict(video="cnn2d", temporal="transformer", fusion_name="concat_early"),
             dict(video="i3d", fusion_name="dual"), dict(video="cnn_rnn", fusion_name="co_attention"),
             dict(video="single_frame", text="bow", audio=None, fusion_name="concat_late"),
             dict(video="vivit", variant="factorised_self_attention", scan=True),
             dict(video="linear", text="linear", audio=None, fusion_name="add", caption="linear")])
assert {v.get("fusion_name", "cross_attention") for v in VARIANTS} == set(fusion.FUSIONS)
assert {v["video"] for v in VARIANTS} == set(vlm.VIDEO_ENCODERS)


def collect_logical_names(monkeypatch) -> dict[str, set[str]]:
    """Logical names of every parameter (boxed abstract init) and of every activation constraint
    (`nn.with_logical_constraint`, recorded) over all VARIANTS."""
    used = {"params": set(), "activations": set()}

    def record(x, axes, *args, **kwargs):
        leaves = jax.tree.leaves(axes, is_leaf=lambda a: isinstance(a, tuple))
        for spec in leaves:
            used["activations"].update(n for n in (spec if isinstance(spec, tuple) else (spec,)) if isinstance(n, str))
        return x

    monkeypatch.setattr(nn, "with_logical_constraint", record)
    batch = make_batch()
    for variant in VARIANTS:
        abstract = jax.eval_shape(init_fn(make_model(**variant)), rngs(), batch)
        for box in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)):
            assert isinstance(box, nn.LogicallyPartitioned), (variant, box)
            used["params"].update(n for n in box.names if n is not None)
    return used


def test_every_logical_name_in_the_models_has_a_rule(monkeypatch):
    used = collect_logical_names(monkeypatch)
    ruled = {name for name, _ in parallel.DEFAULT_RULES}
    assert used["params"] - ruled == set(), "parameter names without a rule"
    assert used["activations"] - ruled == set(), "activation names without a rule"
    # The list is what the models use (a stale or misspelled rule shows up here).
    assert ruled == used["params"] | used["activations"], ruled ^ (used["params"] | used["activations"])
    assert {"embed", "mlp", "heads", "vocab", "layers", "audio_mel", "activation_batch"} <= ruled


def test_batch_axes_and_rules_for_follow_the_mesh():
    """MaxText's ("data", "fsdp") except on 3-D meshes, where XLA miscompiles it (see vlm_jax.parallel)."""
    for shape, axes in [((8, 1, 1), ("data", "fsdp")), ((2, 4, 1), ("data", "fsdp")), ((1, 4, 2), ("data", "fsdp")),
                        ((2, 2, 2), ("fsdp", "data")), ((4, 2, 2), ("fsdp", "data"))]:
        mesh = abstract_mesh(shape)
        assert parallel.batch_axes(mesh) == axes, shape
        assert dict(parallel.rules_for(mesh))["activation_batch"] == axes
        assert parallel.batch_sharding(mesh).spec == P(axes)
        assert {k: v for k, v in parallel.rules_for(mesh) if k != "activation_batch"} == \
            {k: v for k, v in parallel.DEFAULT_RULES if k != "activation_batch"}
    assert parallel.batch_axes(AbstractMesh((4, 2), ("data", "tensor"))) == ("data",)


def test_fit_spec_replicates_what_does_not_divide():
    mesh = abstract_mesh((2, 4, 1))
    assert parallel.fit_spec(P("fsdp", "tensor"), (8, 3), mesh) == P("fsdp", "tensor")
    assert parallel.fit_spec(P("fsdp"), (6, 3), mesh) == P()
    assert parallel.fit_spec(P(None, ("data", "fsdp")), (3, 8), mesh) == P(None, ("data", "fsdp"))
    assert parallel.fit_spec(P(("data", "fsdp")), (6,), mesh) == P("data",)
    assert parallel.fit_spec(P(("fsdp", "data")), (6,), mesh) == P()


def test_logical_shardings_of_odd_sizes_on_abstract_meshes():
    abstract = jax.eval_shape(OddModel().init, jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
    shardings = parallel.logical_shardings(abstract, abstract_mesh((1, 4, 2)))
    specs = {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_leaves_with_path(shardings)}
    # width 12 splits 4 ways on fsdp; vocab 15 does not divide by tensor=2, so it is replicated
    assert specs["['params']['Embed_0']['embedding']"] == P(None, "fsdp")
    assert specs["['params']['logits']['kernel']"] == P("fsdp")
    assert specs["['params']['mlp']['fc1']['kernel']"] == P("fsdp", "tensor")  # 12 x 6
    shardings = parallel.logical_shardings(abstract, abstract_mesh((1, 8, 1)))
    embedding = shardings["params"]["Embed_0"]["embedding"]
    assert embedding.spec == P("tensor") and embedding.shard_shape((15, 12)) == (15, 12)  # 12 % 8 != 0


def test_mesh_spec_maps_logical_names():
    rules = (("a", "fsdp"), ("b", "tensor"))
    assert parallel.mesh_spec(("a", None, "b"), rules) == P("fsdp", None, "tensor")
    assert parallel.mesh_spec(None, rules) == P()
    assert parallel.mesh_spec(("x", None), [("x", ["data", "fsdp"])]) == P(("data", "fsdp"), None)  # JSON lists


def test_per_device_parameter_bytes_shrink_with_fsdp():
    """Computed from the shardings alone (no devices): the tiny VLM's parameters per device."""
    abstract = jax.eval_shape(init_fn(make_model()), rngs(), make_batch())
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nn.meta.unbox(abstract)))
    sizes = {fsdp: per_device_bytes(abstract, parallel.logical_shardings(abstract, abstract_mesh((1, fsdp, 1))))
             for fsdp in (1, 2, 4, 8)}
    assert sizes[1] == total
    assert sizes[1] > sizes[2] > sizes[4] > sizes[8] and sizes[8] < total / 6, sizes


# ------------------------------------------------------------------ 8 devices, in one subprocess

@pytest.fixture(scope="module", autouse=True)
def eight_device_run(request):
    """Start the 8-device subprocess with this module's first test (if any selected test needs it), so it
    runs while the in-process tests do; `results` waits for it."""
    wanted = any("results" in item.fixturenames for item in request.session.items if item.module is request.module)
    if not wanted:
        yield None
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
    process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=REPO)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def results(eight_device_run) -> dict:
    stdout, stderr = eight_device_run.communicate(timeout=600)
    assert eight_device_run.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_meshes_resolve_on_8_devices(results):
    assert results["devices"] == 8
    assert results["meshes"] == {"(8, 1, 1)": [8, 1, 1], "(2, 4, 1)": [2, 4, 1], "(2, 2, 2)": [2, 2, 2],
                                 "(-1, 2, 1)": [4, 2, 1]}
    assert all(message.startswith("UserError: mesh.shape") for message in results["bad_meshes"].values()), \
        results["bad_meshes"]


def test_sharded_init_of_odd_model(results):
    for name, check in results["odd"].items():
        assert check["placed"], name
        assert check["max_diff"] == 0.0, name  # bit-exact against one device


def test_sharded_init_of_the_tiny_vlm_on_fsdp_8(results):
    vlm_check = results["vlm"]
    assert vlm_check["threefry_partitionable"]
    assert vlm_check["misplaced"] == []
    assert vlm_check["fsdp_leaves"] > 50
    # each device holds 1/8 of the embed axis of the big kernels
    assert vlm_check["word_embeddings_shard"] == [30522, 8]
    assert vlm_check["fc1_shard"] == [8, 256]
    assert vlm_check["distinct_fc1_shards"] == 8
    assert vlm_check["per_device_bytes"] == vlm_check["predicted_per_device_bytes"]
    assert vlm_check["per_device_bytes"] < vlm_check["total_bytes"] / 6
    assert vlm_check["max_diff"] == 0.0  # bit-exact against a plain single-device init


def test_batch_split_dodges_the_xla_miscompile(results):
    assert results["xla_bug"]["ours"] < 1e-4, results["xla_bug"]


def test_to_global(results):
    check = results["to_global"]
    assert check["equal"] and check["placed"]
    assert check["shard_rows"] == 1  # 8 examples over data x fsdp = 8
    assert check["bad"].startswith("UserError:") and "batch shards" in check["bad"]


def test_two_processes():
    """2 processes x 4 CPU devices on loopback: one global mesh, to_global and sharded_init across hosts."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"}
    command = lambda i: ["timeout", "300", sys.executable, __file__, "--process", str(i), "--port", str(port)]
    processes = [subprocess.Popen(command(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                  cwd=REPO) for i in range(2)]
    outputs = [p.communicate(timeout=320) for p in processes]
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-4000:]
    for stdout, _ in outputs:
        check = json.loads(stdout.strip().splitlines()[-1])
        assert check["devices"] == [8, 4]
        assert check["batch"] == {"(2, 2, 2)": [4, True], "(1, 1, 8)": [8, True], "(-1, 1, 1)": [4, True]}
        assert check["init_placed"] and check["init_max_diff"] == 0.0


@pytest.mark.slow
def test_sharded_forward_and_gradient_equal_one_device():
    """The tiny VLM's outputs and gradients on 2x2x2 and 2x4x1 meshes (rules_for, activation constraints on)
    equal one device's; 2x2x2 is the mesh where MaxText's batch order miscompiles."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
    run = subprocess.run([sys.executable, __file__, "--equivalence"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    for shape, (output, gradient) in errors.items():
        assert output < 1e-4 and gradient < 1e-5, (shape, output, gradient)


# ------------------------------------------------------------------ the subprocess

def _max_diff(a, b) -> float:
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)


def _placed(variables, shardings) -> list[str]:
    """Paths of leaves whose sharding differs from the computed one."""
    bad = []
    for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree.leaves(shardings)):
        if not leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            bad.append(f"{jax.tree_util.keystr(path)}: {leaf.sharding.spec} != {sharding.spec}")
    return bad


def _error(fn) -> str:
    try:
        fn()
    except UserError as error:
        return f"UserError: {error}"
    except Exception as error:  # noqa: BLE001 - reported, then asserted on
        return f"{type(error).__name__}: {error}"
    return "no error"


def subprocess_checks() -> dict:
    out = {"devices": jax.device_count()}
    out["meshes"] = {str(s): list(parallel.make_mesh(s).devices.shape)
                     for s in [(8, 1, 1), (2, 4, 1), (2, 2, 2), (-1, 2, 1)]}
    out["bad_meshes"] = {str(s): _error(lambda s=s: parallel.make_mesh(s)) for s in [(3, 1, 1), (2, 8, 1), (-1, 3, 1)]}

    # a fast model with odd sizes, on several meshes
    odd, ids = OddModel(), jnp.asarray(np.arange(10).reshape(2, 5) % 15, jnp.int32)
    reference = jax.jit(lambda k, x: nn.meta.unbox(odd.init(k, x)))(jax.random.key(3), ids)
    out["odd"] = {}
    for shape in [(2, 2, 2), (1, 8, 1), (1, 1, 8), (-1, 2, 1)]:
        mesh = parallel.make_mesh(shape)
        variables, shardings = parallel.sharded_init(odd.init, mesh, parallel.DEFAULT_RULES, jax.random.key(3), ids)
        out["odd"][str(shape)] = {"placed": _placed(variables, shardings) == [],
                                  "max_diff": _max_diff(variables, reference)}

    # the tiny VLM, fsdp = 8
    model, batch = make_model(), make_batch()
    # the plain single-device reference compiles in a thread meanwhile (XLA compiles without the GIL)
    reference = jax.jit(lambda r, b: nn.meta.unbox(model.init(r, **b))).lower(rngs(), batch)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    compiled = pool.submit(reference.compile)
    mesh = parallel.make_mesh((1, 8, 1))
    variables, shardings = parallel.sharded_init(init_fn(model), mesh, parallel.DEFAULT_RULES, rngs(), batch)
    single = compiled.result()(rngs(), batch)
    pool.shutdown()
    abstract = jax.eval_shape(init_fn(model), rngs(), batch)
    params = variables["params"]
    fc1 = params["video_encoder"]["spatial_transformer"]["layer_0"]["mlp"]["fc1"]["kernel"]  # 64 x 256
    out["vlm"] = {
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "misplaced": _placed(variables, shardings),
        "fsdp_leaves": sum("fsdp" in jax.tree.leaves(tuple(s.spec)) for s in jax.tree.leaves(shardings)),
        "word_embeddings_shard": list(params["text_encoder"]["embeddings"]["word_embeddings"]["embedding"]
                                      .addressable_shards[0].data.shape),
        "fc1_shard": list(fc1.addressable_shards[0].data.shape),
        "distinct_fc1_shards": len({(s.device.id, str(s.index)) for s in fc1.addressable_shards}),
        "per_device_bytes": sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(variables)),
        "predicted_per_device_bytes": per_device_bytes(abstract, shardings),
        "total_bytes": sum(x.nbytes for x in jax.tree.leaves(variables)),
        "max_diff": _max_diff(variables, single),
    }

    # The XLA miscompile that batch_axes works around: the library's batch split must be right on 2x2x2;
    # "canary" records whether MaxText's order is still wrong (if it turns False, the workaround can go).
    mesh = parallel.make_mesh((2, 2, 2))
    rng = np.random.default_rng(0)
    x, a, b, c = (rng.normal(size=s).astype(np.float32) / 8 for s in [(8, 12, 64), (64, 64), (64, 64), (64, 64)])
    chain = jax.jit(lambda x, a, b, c: ((x @ a) @ b) @ c)
    weights = [jax.device_put(w, NamedSharding(mesh, s)) for w, s in
               zip((a, b, c), (P("fsdp", "tensor"), P("tensor", "fsdp"), P("tensor", "fsdp")))]
    expected = np.asarray(chain(x, a, b, c))
    error = lambda spec: float(np.max(np.abs(np.asarray(chain(jax.device_put(x, spec), *weights)) - expected)))
    out["xla_bug"] = {"ours": error(parallel.batch_sharding(mesh)),
                      "canary": error(NamedSharding(mesh, P(("data", "fsdp")))) > 1e-3}

    # batches
    mesh = parallel.make_mesh((2, 4, 1))
    host = make_batch(batch_size=8)
    global_batch = parallel.to_global(host, mesh)
    sharding = parallel.batch_sharding(mesh)
    out["to_global"] = {
        "equal": all(np.array_equal(np.asarray(global_batch[k]), v) for k, v in host.items()),
        "placed": all(x.sharding.is_equivalent_to(sharding, x.ndim) for x in global_batch.values()),
        "shard_rows": global_batch["video"].addressable_shards[0].data.shape[0],
        "bad": _error(lambda: parallel.to_global(make_batch(batch_size=6), mesh)),
    }
    return out


def equivalence_checks() -> dict:
    """Max |sharded - single device| of the outputs, and of the gradients relative to their largest entry."""
    model, host = make_model(), make_batch(batch_size=8)

    def loss(params, batch):
        out = model.apply({"params": params}, **batch)
        return sum(jnp.sum(v.astype(jnp.float32)) for v in jax.tree.leaves(out)), out

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    variables = jax.jit(lambda r, b: nn.meta.unbox(model.init(r, **b)))(rngs(), host)
    (_, ref_out), ref_grads = grad_fn(variables["params"], host)
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    errors = {}
    for shape in [(2, 2, 2), (2, 4, 1)]:
        mesh = parallel.make_mesh(shape)
        rules = parallel.rules_for(mesh)
        sharded, _ = parallel.sharded_init(init_fn(model), mesh, rules, rngs(), host)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            (_, out), grads = grad_fn(sharded["params"], parallel.to_global(host, mesh))
        errors[str(shape)] = [_max_diff(out, ref_out), _max_diff(grads, ref_grads) / scale]
    return errors


def process_checks(process_id: int, port: int) -> dict:
    """One of two processes (4 CPU devices each, from XLA_FLAGS) sharing an 8-device mesh."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=60)
    from jax.experimental import multihost_utils
    out = {"devices": [jax.device_count(), jax.local_device_count()], "batch": {}}
    rows = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    for shape in [(2, 2, 2), (1, 1, 8), (-1, 1, 1)]:
        mesh = parallel.make_mesh(shape)
        global_rows = 8
        # this process's rows: those of the batch shards its devices hold, in order
        indices = parallel.batch_sharding(mesh).addressable_devices_indices_map((global_rows, 3)).values()
        mine = sorted({(i[0].start or 0, i[0].stop or global_rows) for i in indices})
        local = np.concatenate([rows[a:b] for a, b in mine])
        array = parallel.to_global({"x": local}, mesh)["x"]
        gathered = multihost_utils.process_allgather(array, tiled=True)
        out["batch"][str(shape)] = [len(local), bool(np.array_equal(gathered, rows[:global_rows]))]
    odd, ids = OddModel(), jnp.asarray(np.arange(10).reshape(2, 5) % 15, jnp.int32)
    reference = jax.jit(lambda k, x: nn.meta.unbox(odd.init(k, x)), device=jax.local_devices()[0])(
        jax.random.key(3), ids)
    mesh = parallel.make_mesh((2, 2, 2))
    variables, shardings = parallel.sharded_init(odd.init, mesh, parallel.DEFAULT_RULES, jax.random.key(3), ids)
    out["init_placed"] = _placed(variables, shardings) == []
    out["init_max_diff"] = _max_diff(multihost_utils.process_allgather(variables, tiled=True), reference)
    jax.distributed.shutdown()
    return out


if __name__ == "__main__":
    if "--process" in sys.argv:
        arguments = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        print(json.dumps(process_checks(int(arguments["--process"]), int(arguments["--port"]))))
    elif "--equivalence" in sys.argv:
        print(json.dumps(equivalence_checks()))
    else:
        print(json.dumps(subprocess_checks()))
