"""Training on moving_shapes with real pretrained towers, or the same towers from scratch to compare.

    vlm train --config configs/pretrain_towers.py:small,text=pretrained --workdir runs/minilm
    vlm train --config configs/pretrain_towers.py:small,video=scratch --workdir runs/i3d_scratch
    vlm train --config configs/pretrain_towers.py:small,task=qa,text=frozen --workdir runs/qa_minilm

The argument is a preset of `pretrain.py`, then any of:
- `task=pretrain|qa|retrieval|caption`: pretraining (the default), or that finetuning config
  (`finetune_<task>.py`) started from the towers alone;
- `text=pretrained|frozen|scratch`: the text tower is BERT with all-MiniLM-L6-v2's architecture (6 x 384),
  initialised from its real weights and finetuned at a tenth of the learning rate, or kept frozen, or
  trained from a random init (the baseline);
- `video=pretrained|frozen|scratch`: the video tower is the full-width I3D, initialised from the
  Kinetics-400 weights (finetuned at a tenth of the learning rate, or frozen; its BatchNorm statistics
  keep adapting), or from a random init.
"""

from pathlib import Path

from vlm_jax import config as config_lib

MODES = ("pretrained", "frozen", "scratch")
TOWERS = {
    # option: (module, model block, architecture, pretrained tower)
    "text": ("text_encoder", "text", ("bert", {"width": 384, "depth": 6, "num_heads": 12, "mlp_dim": 1536}),
             "all-MiniLM-L6-v2"),
    "video": ("video_encoder", "video", ("i3d", {"width_scale": 1.0, "num_classes": 0}), "i3d_kinetics400"),
}
FINETUNE_LR_MULTIPLIER = 0.1
TASKS = {"pretrain": "pretrain.py", "qa": "finetune_qa.py", "retrieval": "finetune_retrieval.py",
         "caption": "finetune_caption.py"}


def get_config(arg=None):
    preset, *options = (arg or "tiny").split(",")
    tasks = [option.partition("=")[2] for option in options if option.startswith("task=")]
    task = tasks[-1] if tasks else "pretrain"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    config = config_lib.load_file(Path(__file__).with_name(TASKS[task])).get_config(preset)
    frozen, multipliers = [], {}
    for option in options:
        if option.startswith("task="):
            continue
        tower, _, mode = option.partition("=")
        if tower not in TOWERS or mode not in MODES:
            raise ValueError(f"unknown option {option!r}; use text=MODE or video=MODE with MODE one of {MODES}")
        module, block, (name, sizes), pretrained_name = TOWERS[tower]
        config.model[block].name = name
        config.model[block][name].update(sizes)
        if mode != "scratch":
            config.init_from[module] = pretrained_name
            if mode == "frozen":
                frozen.append(module)
            else:
                multipliers[module] = FINETUNE_LR_MULTIPLIER
    config.optim.frozen = frozen
    config.optim.lr_multipliers = {module: multiplier for module, multiplier in
                                   {**config.optim.lr_multipliers, **multipliers}.items() if module not in frozen}
    return config
