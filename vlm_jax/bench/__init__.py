"""`vlm bench`: throughput and memory, measured side by side in one run (docs/bench.md). One module per
section (`SECTIONS`), their shared helpers in `common`, the runner in `runner`; `profile` traces our side of
a peer.

The sections import the data pipeline, the train loop and our models: `run` imports them when called, not
here, because the sections' subprocesses (`python -m vlm_jax.bench.memory`, `python -m vlm_jax.bench.peers`)
run this file first, and the peers' one measures its own peak memory.
"""

from __future__ import annotations

from typing import Sequence

from vlm_jax.bench.common import SECTIONS


def run(quick: bool, out_dir: str, data_dir: str | None = None, sections: Sequence[str] = SECTIONS,
        presets: Sequence[str] | None = None) -> dict[str, float]:
    """The chosen sections in `SECTIONS` order; writes OUT/results.json and OUT/results.md (`runner.run`)."""
    from vlm_jax.bench import runner

    return runner.run(quick, out_dir, data_dir, sections, presets)
