"""Hugging Face BERT safetensors <-> `models.text.bert.Bert` params, by a declarative mapping table.

Each row is (checkpoint name, our param path, transform); "{i}" rows repeat per layer. Loading
refuses a checkpoint with missing or unexpected tensors, or with a shape our model does not expect,
and names them, so a silently half-loaded tower is impossible.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from vlm_jax.convert import mapping as mapping_lib
from vlm_jax.errors import UserError
from vlm_jax.models.text.bert import Bert

GLOBAL_TABLE = (
    ("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding", "identity"),
    ("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding", "identity"),
    ("embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding", "identity"),
    ("embeddings.LayerNorm.weight", "embeddings/norm/scale", "identity"),
    ("embeddings.LayerNorm.bias", "embeddings/norm/bias", "identity"),
    ("pooler.dense.weight", "pooler/kernel", "transpose"),
    ("pooler.dense.bias", "pooler/bias", "identity"),
)

LAYER_TABLE = (
    ("encoder.layer.{i}.attention.self.query.weight", "encoder/layer_{i}/attention/query/kernel", "transpose"),
    ("encoder.layer.{i}.attention.self.query.bias", "encoder/layer_{i}/attention/query/bias", "identity"),
    ("encoder.layer.{i}.attention.self.key.weight", "encoder/layer_{i}/attention/key/kernel", "transpose"),
    ("encoder.layer.{i}.attention.self.key.bias", "encoder/layer_{i}/attention/key/bias", "identity"),
    ("encoder.layer.{i}.attention.self.value.weight", "encoder/layer_{i}/attention/value/kernel", "transpose"),
    ("encoder.layer.{i}.attention.self.value.bias", "encoder/layer_{i}/attention/value/bias", "identity"),
    ("encoder.layer.{i}.attention.output.dense.weight", "encoder/layer_{i}/attention/out/kernel", "transpose"),
    ("encoder.layer.{i}.attention.output.dense.bias", "encoder/layer_{i}/attention/out/bias", "identity"),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder/layer_{i}/attention_norm/scale", "identity"),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder/layer_{i}/attention_norm/bias", "identity"),
    ("encoder.layer.{i}.intermediate.dense.weight", "encoder/layer_{i}/intermediate/kernel", "transpose"),
    ("encoder.layer.{i}.intermediate.dense.bias", "encoder/layer_{i}/intermediate/bias", "identity"),
    ("encoder.layer.{i}.output.dense.weight", "encoder/layer_{i}/output/kernel", "transpose"),
    ("encoder.layer.{i}.output.dense.bias", "encoder/layer_{i}/output/bias", "identity"),
    ("encoder.layer.{i}.output.LayerNorm.weight", "encoder/layer_{i}/output_norm/scale", "identity"),
    ("encoder.layer.{i}.output.LayerNorm.bias", "encoder/layer_{i}/output_norm/bias", "identity"),
)

# A buffer, not a parameter: HF saves it in some checkpoints (MiniLM's included).
DEFAULT_IGNORE = ("embeddings.position_ids",)


def mapping(depth: int) -> mapping_lib.Table:
    """Checkpoint name -> (our param path, transform) for a `depth`-layer BERT."""
    return mapping_lib.expand(GLOBAL_TABLE, LAYER_TABLE, depth)


def expected_shapes(config: Bert) -> dict[str, tuple[int, ...]]:
    ids = jnp.zeros((1, 2), jnp.int32)
    return mapping_lib.abstract_shapes(lambda: config.init(jax.random.key(0), ids, ids)["params"])


def load_hf_bert(path: str | Path, config: Bert, ignore: Iterable[str] = DEFAULT_IGNORE) -> dict:
    """Read a HF BERT `model.safetensors` into the params tree of `config` (apply with {"params": ...}).

    Raises UserError naming missing, unexpected or mis-shaped tensors; `ignore` lists checkpoint names to skip.
    """
    if not Path(path).is_file():
        raise UserError(f"no safetensors checkpoint at {path}")
    shapes = expected_shapes(config)
    table = mapping(config.depth)
    mapping_lib.check_covers(table, shapes, "hf_bert")
    flat = mapping_lib.to_ours(load_file(str(path)), table, shapes, f"{path} (a {config.depth}-layer BERT)", ignore)
    return mapping_lib.unflatten({k: jnp.asarray(v, config.param_dtype) for k, v in flat.items()})


def hf_state(params: dict, config: Bert) -> dict[str, np.ndarray]:
    """Our Bert params -> float32 tensors in transformers' BertModel names and layouts."""
    tensors = mapping_lib.to_source(mapping_lib.flatten(params), mapping(config.depth), "the Bert params")
    return {name: np.ascontiguousarray(value, np.float32) for name, value in tensors.items()}
