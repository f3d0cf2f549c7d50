"""The pretraining config at one of its presets, as the sections that run the real model or its encoders
read it. Apart from `common`, so that the peers' subprocesses do not import the config machinery."""

from __future__ import annotations

from typing import Any, Sequence

from vlm_jax import config as config_lib


def load_config(preset: str, data_dir: str, overrides: Sequence[str] = ()) -> Any:
    return config_lib.for_preset(preset, [f"data.data_dir={data_dir}", *overrides])
