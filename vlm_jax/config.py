"""Config files: loading `FILE[:preset]`, command-line overrides, validation and config.json.

A config file is a Python module with `get_config(arg=None) -> ml_collections.ConfigDict`
(big_vision style); `arg` names a preset. Overrides look like `train.batch_size=64`;
their values are parsed to the type of the value they replace.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from vlm_jax import schema
from vlm_jax.errors import UserError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """The config named by `FILE[:preset]` (a config file), or a run's `config.json` (which reproduces that
    run), with overrides applied, validated."""
    path, _, arg = spec.partition(":")
    if path.endswith(".json"):
        if arg:
            raise UserError(f"{path} is a resolved config; it takes no preset (got {arg!r})")
        config = from_json(path)
        # keys added to the code after the run wrote its config.json take their defaults (not loss weights:
        # a run's losses are the ones it chose)
        defaults = reference_config(config.get("preset"))
        del defaults["losses"]
        defaults.model.retrieval_audio = False  # runs from before the key embedded the video alone
        add_missing(config, defaults)
    else:
        config = _from_file(path, arg)
    apply_overrides(config, overrides)
    validate(config)
    return config


def for_preset(preset: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """The pretraining config of a preset (`schema.defaults`, what `configs/pretrain.py:PRESET` gives) with
    overrides, validated: for code that needs a config without a config file (`vlm bench`)."""
    try:
        config = schema.defaults(preset)
    except ValueError as e:
        raise UserError(str(e)) from None
    apply_overrides(config, overrides)
    validate(config)
    return config


def _from_file(path: str, arg: str) -> ml_collections.ConfigDict:
    module = load_file(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} has no get_config(arg) function")
    try:
        return module.get_config(arg or None)
    except ValueError as e:  # config files raise ValueError for an unknown preset
        raise UserError(f"{path}: {e}") from None
    except TypeError as e:  # ml_collections refuses a value of another type than the field's
        raise UserError(f"{path}: {e}") from None


def load_file(path: str | os.PathLike) -> Any:
    """A config file as a module (finetuning configs use it to start from `pretrain.py`)."""
    if not Path(path).is_file():
        raise UserError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"vlm_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Apply `key.path=value` overrides in order; one that sets an option of an encoder the config does not
    choose (`model.video.vivit.depth` with `model.video.name=cnn2d`) would be ignored, so it is an error."""
    keys = [apply_override(config, override) for override in overrides]
    for key in keys:
        family, encoder = encoder_option(key) or (None, None)
        if family and encoder != config.model[family].name:
            raise UserError(f"config key {key} sets an option of {encoder}, but model.{family}.name is "
                            f"{config.model[family].name!r}: it would be ignored")


def encoder_option(key: str) -> tuple[str, str] | None:
    """(family, encoder) when `key` sets an option of one encoder (`model.video.vivit.depth`), else None."""
    from vlm_jax.models import vlm

    parts = key.removeprefix("--config.").partition("=")[0].split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[2] in vlm.FAMILIES.get(parts[1], {}):
        return parts[1], parts[2]
    return None


def apply_override(config: ml_collections.ConfigDict, override: str) -> str:
    """Set `key.path=value` in place and return the key; unknown keys and badly typed values raise UserError."""
    key, sep, text = override.partition("=")
    key = key.removeprefix("--config.").strip()
    if not sep or not key:
        raise UserError(f"config override {override!r} is not KEY=VALUE")
    known = flatten(config)
    if key not in known:
        _unknown(key, known)
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = parse_value(key, text, node.get_type(leaf))
    return key


def _unknown(key: str, known: Iterable[str]) -> None:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    raise UserError(f"unknown config key {key!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))


def parse_value(key: str, text: str, expected: type) -> Any:
    """`text` as the field's declared type (any Python literal, else a string, when it is untyped None)."""
    text = text.strip()
    # "none" stays a string (remat=none); a bool may be None where its default is (model.retrieval_audio)
    if text == "None" and (expected is bool or not issubclass(expected, (int, float))):
        return None
    try:
        if expected is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if expected in (int, float, str):
            return expected(text)
        if expected in (tuple, list):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                raise ValueError
            return expected(value)
    except (ValueError, SyntaxError):
        raise UserError(f"config key {key!r} expects {expected.__name__}, got {text!r}") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def validate(config: ml_collections.ConfigDict) -> None:
    """Constraints checked before anything is built or compiled; each failure names its key."""
    from vlm_jax.data import moving_shapes_tfds, registry  # here, so that `vlm --help` loads no TFDS

    check_keys_and_types(config)
    data = config.data
    _check(data.name in registry.DATASETS, "data.name", f"must be {registry.CHOICES}", data.name)
    for key, names in registry.DATASETS[data.name].required.items():
        _check(data[key], f"data.{key}", f"must name {names} for {data.name}", data[key])
    _check(data.size in moving_shapes_tfds.SIZES, "data.size", f"must be one of {', '.join(moving_shapes_tfds.SIZES)}",
           data.size)
    for key in ("num_frames", "image_size", "build_frames", "build_image_size", "max_text_len", "max_question_len",
                "questions_per_clip", "max_objects"):
        _check(isinstance(data[key], int) and data[key] > 0, f"data.{key}", "must be a positive integer", data[key])
    _check(data.num_frames <= data.build_frames, "data.num_frames", "must not exceed data.build_frames",
           data.num_frames)
    _check(8 <= data.build_image_size <= 224, "data.build_image_size", "must be between 8 and 224",
           data.build_image_size)
    _check(0.0 < data.augment.min_crop_scale <= 1.0, "data.augment.min_crop_scale", "must be in (0, 1]",
           data.augment.min_crop_scale)
    _check(data.num_workers >= 0, "data.num_workers", "must be >= 0", data.num_workers)
    from vlm_jax.train.steps import TASKS
    _check(config.train.task in TASKS, "train.task", f"must be one of {', '.join(TASKS)}", config.train.task)
    _check(config.train.batch_size > 0, "train.batch_size", "must be positive", config.train.batch_size)
    _check(config.train.num_steps >= 0, "train.num_steps", "must be >= 0", config.train.num_steps)
    _check(config.train.on_nonfinite in ("skip", "stop"), "train.on_nonfinite", "must be skip or stop",
           config.train.on_nonfinite)
    from vlm_jax.models import fusion, vlm
    choices = {f"model.{family}.name": list(modules) for family, modules in vlm.FAMILIES.items()}
    choices["model.audio.name"].append(None)
    choices.update({"model.fusion.name": list(fusion.FUSIONS), "model.caption.name": list(vlm.CAPTION_DECODERS)})
    for key, names in choices.items():
        value = config.model[key.split(".")[1]].name
        _check(value in names, key, f"must be one of {', '.join(map(str, names))}", value)
    for key, allowed, value in vlm.field_problems(config.model):
        _check(False, key, f"must be one of {allowed}", value)
    if not fusion.FUSIONS[config.model.fusion.name].MIXES_TOKENS:  # no fused tokens to match or to fill in
        for loss in ("vtm", "mlm"):
            _check(not config.losses.get(loss, 0.0), f"losses.{loss}",
                   f"must be 0 with model.fusion.name={config.model.fusion.name}", config.losses.get(loss))
    _check(len(config.mesh.shape) == len(config.mesh.axes), "mesh.shape", "must have one entry per mesh.axes",
           config.mesh.shape)
    _check(list(config.mesh.shape).count(-1) <= 1, "mesh.shape", "may hold at most one -1", config.mesh.shape)
    _check(not (config.model.retrieval_audio and config.model.audio.name is None), "model.retrieval_audio",
           "must not be True without an audio tower (model.audio.name=None)", config.model.retrieval_audio)


def check_keys_and_types(config: ml_collections.ConfigDict) -> None:
    """Every key must be one that `schema.defaults` declares, holding a value of its type (a config file or a
    config.json can add keys that nothing reads: a typo there would be silently ignored). Loss weights
    must name losses of the run's task; empty blocks (`optim.lr_multipliers`) are open maps."""
    from vlm_jax.train.steps import TASKS

    reference = reference_config(config.get("preset"))
    known = flatten(reference)
    open_maps = [key for key, value in _blocks(reference) if not value]
    for key, value in flatten(config).items():
        if any(key == m or key.startswith(m + ".") for m in open_maps):
            continue
        if key.startswith("losses.") and config.train.task in TASKS:  # (validate names a bad task)
            losses = TASKS[config.train.task].losses
            _check(key.removeprefix("losses.") in losses, key, f"is not a loss of train.task={config.train.task!r} "
                   f"(its losses: {', '.join(losses)})", value)
            _check(_is_number(value), key, "must be a number", value)
            continue
        if key not in known:
            _unknown(key, known)
        *parents, leaf = key.split(".")
        node = reference
        for parent in parents:
            node = node[parent]
        expected = node.get_type(leaf)
        if not (value is None and node[leaf] is None) and not _fits(value, expected):  # None fits a None default
            raise UserError(f"config key {key} expects {expected.__name__}, got {type(value).__name__} {value!r}")


def reference_config(preset: str | None) -> ml_collections.ConfigDict:
    """Every key a config may hold, with its type and default: `schema.defaults` of `preset` (of the
    default preset when it is not one of `schema.PRESETS`)."""
    return schema.defaults(preset if preset in schema.PRESETS else None)


def _blocks(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, block) for every nested block."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield f"{prefix}{key}", value
            yield from _blocks(value, f"{prefix}{key}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value: Any, expected: type) -> bool:
    """Whether `value` may stand where the reference holds an `expected`: an int is a float, a list is a
    tuple, and None (no such part: model.audio.name=None) fits anything but a bool or a number."""
    if value is None:
        return not issubclass(expected, (bool, int, float))
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return _is_number(value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (tuple, list):
        return isinstance(value, (tuple, list))
    if expected is type(None):
        return True
    return isinstance(value, expected)


def _check(ok: bool, key: str, constraint: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config key {key} {constraint} (got {value!r})")


def write(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Write the resolved config as workdir/config.json, so the run can be reproduced: each encoder family
    with the block of its chosen encoder only (`load` completes the others from `schema.defaults`)."""
    from vlm_jax.models import vlm

    written = config.to_dict()
    for family, encoders in vlm.FAMILIES.items():
        block = written["model"][family]
        for name in encoders:
            if name != block["name"]:
                block.pop(name, None)
    path = Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(written, indent=2, sort_keys=True, default=list) + "\n")
    return path


def add_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
    """Give `config` every key of `defaults` it lacks (recursively), e.g. a block's keys added to the code
    after an older run wrote its config.json."""
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
            add_missing(config[key], value)


def from_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """A config written by `write`, as a ConfigDict again (tuples come back as lists)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no config.json at {path}")
    return ml_collections.ConfigDict(json.loads(path.read_text()))
