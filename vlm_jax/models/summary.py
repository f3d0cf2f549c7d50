"""`vlm models summary`: parameters per module and forward FLOPs per clip, from XLA's cost analysis."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from vlm_jax.models import vlm

AUDIO_SAMPLES_PER_FRAME = 2000  # moving_shapes: 16 kHz at 8 frames per second


def example_inputs(config, audio_samples: int | None = None) -> dict:
    """One clip, one caption and one question at the shapes the config's data pipeline produces
    (`audio_samples`: the data's waveform length; by default moving_shapes' for `data.build_frames`)."""
    data = config.data
    audio_samples = audio_samples or data.build_frames * AUDIO_SAMPLES_PER_FRAME
    length = data.max_text_len
    return {
        "video": jnp.zeros((1, data.num_frames, data.image_size, data.image_size, 3), jnp.uint8),
        "audio_wave": jnp.zeros((1, audio_samples), jnp.float32),
        "caption": jnp.ones((1, length), jnp.int32), "caption_mask": jnp.ones((1, length), jnp.int32),
        "question": jnp.ones((1, length), jnp.int32), "question_mask": jnp.ones((1, length), jnp.int32),
    }


def _flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", math.nan))


def summarize(config: ml_collections.ConfigDict, num_answers: int) -> dict:
    """Parameter count of each top-level module, and forward GFLOPs per clip of the towers and the whole."""
    model = vlm.VLM(ml_collections.FrozenConfigDict(config.model), num_answers=num_answers)
    inputs = example_inputs(config)
    rngs = {"params": jax.random.key(0), "masking": jax.random.key(1), "dropout": jax.random.key(2)}
    variables = jax.eval_shape(lambda: model.init(rngs, **inputs))
    params = traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")
    modules: dict[str, int] = {}
    for path, leaf in params.items():
        modules[path.split("/")[0]] = modules.get(path.split("/")[0], 0) + int(np.prod(leaf.shape))
    apply = lambda method: (lambda v, *a: model.apply(v, *a, method=method))
    flops = {
        "video tower": _flops(apply(vlm.VLM.encode_video), variables, inputs["video"]),
        "text tower (one caption)": _flops(apply(vlm.VLM.encode_text), variables, inputs["caption"],
                                           inputs["caption_mask"]),
        "whole model (every head)": _flops(lambda v, i: model.apply(v, **i), variables, inputs),
    }
    return {
        "parts": {"video": config.model.video.name, "text": config.model.text.name,
                  "audio": config.model.audio.name, "fusion": config.model.fusion.name},
        "params": modules,
        "total_params": sum(modules.values()),
        "gflops_per_clip": {k: v / 1e9 for k, v in flops.items()},
    }


def format_table(summary: dict) -> str:
    parts = ", ".join(f"{k}={v}" for k, v in summary["parts"].items())
    lines = [parts, "", f"{'module':<22}{'parameters':>14}{'share':>9}"]
    total = summary["total_params"]
    for name, count in sorted(summary["params"].items(), key=lambda item: -item[1]):
        lines.append(f"{name:<22}{count:>14,}{count / total:>9.1%}")
    lines += [f"{'total':<22}{total:>14,}", "", "forward GFLOPs per clip (XLA cost analysis)"]
    lines += [f"  {name:<26}{value:>10.3f}" for name, value in summary["gflops_per_clip"].items()]
    return "\n".join(lines)
