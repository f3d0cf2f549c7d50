"""vlm_jax: video-language models in JAX/Flax.

The package is built in floors; a module imports only from its own floor or the floors below it, and no
imports form a circle (`tests/test_imports.py` checks both, for imports inside functions too):

    errors                       UserError and TrainingFault, what every floor raises
    parallel                     meshes, shardings and logical axis rules
    data                         data sets (moving_shapes, video_folder), tokenizer, the grain pipeline
    models                       encoders, fusions, heads and the VLM built from them
    convert, pretrained          real pretrained weights into our modules and back
    train                        train state, losses, steps, optimizer, checkpoints
    config, schema               every key's default (schema); config files: loading, overrides and
                                 validation against the schema and what the floors below offer (tasks,
                                 encoders, fusions, data sets)
    run                          a run built from a config or a workdir, the training loop, run checkpoints
                                 in other files
    apps                         search, recommendation, answers, captions, explanations, reports, research
    eval                         evaluators over a run's splits, including what the apps do
    bench                        throughput, MFU, scaling, memory and peers
    cli                          the `vlm` command
"""

FLOORS = (
    ("errors",),
    ("parallel",),
    ("data",),
    ("models",),
    ("convert", "pretrained"),
    ("train",),
    ("config", "schema"),
    ("run",),
    ("apps",),
    ("eval",),
    ("bench",),
    ("cli", "__main__"),
)
