"""The minimal reference VLM: linear video and text encoders, fusion by addition, a linear caption decoder.

It trains with the same steps, losses and heads as every other model, so the research table's
`seed_baseline` row is the floor each real component has to beat. Audio is off: the reference model
has a video and a text input only.

    vlm train --config configs/seed_baseline.py:tiny --workdir runs/seed                # pretraining
    vlm train --config configs/seed_baseline.py:tiny,qa --workdir runs/seed_qa \\
        --config.init_from.workdir=runs/seed                                            # or tiny,caption
"""

from pathlib import Path

from vlm_jax import config as config_lib
from vlm_jax import schema

TASK_CONFIGS = {"pretrain": "pretrain.py", "retrieval": "finetune_retrieval.py", "qa": "finetune_qa.py",
                "caption": "finetune_caption.py"}


def get_config(arg=None):
    """`PRESET` for pretraining, `PRESET,TASK` for finetuning (TASK: retrieval, qa or caption)."""
    preset, _, task = (arg or "tiny").partition(",")
    if (task or "pretrain") not in TASK_CONFIGS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_CONFIGS)}")
    config = config_lib.load_file(Path(__file__).with_name(TASK_CONFIGS[task or "pretrain"])).get_config(preset)
    for key, value in schema.SEED_BASELINE_MODEL.items():
        block, name = key.split(".")
        config.model[block][name] = value
    return config
