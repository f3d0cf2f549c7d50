"""Video search: embed videos into an on-disk index with a trained run, then query it with text.

    vlm search index --workdir runs/pretrain --source test --out index/     # or --source clips/ a.mp4
    vlm search query --index index/ "a red circle moves left" -k 10 --sheet hits.png
    vlm search index --encoder kinetics_bridge --source real_clips/ --out index/  # zero-shot, real video

An index remembers what embedded it (a run and checkpoint step, or the Kinetics bridge and its frame
choice); queries load that same model, and adding videos with a different one is refused (the
embedding spaces would not match).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.apps import predictor as predictor_lib
from vlm_jax.apps.index import Index
from vlm_jax.data import show
from vlm_jax.errors import UserError

ADD_EVERY = 50_000  # clips embedded between index commits: a crash loses at most this many


def load_embedder(description: dict):
    """The model that embedded an index, from the description it stored: a trained run, or the
    zero-shot Kinetics bridge."""
    from vlm_jax.apps import kinetics  # imports only the pretrained towers' code, not their weights
    if description.get("encoder") == kinetics.ENCODER:
        return kinetics.KineticsBridge.from_description(description)
    if "workdir" not in description:
        raise UserError("the index does not name the model that embedded it")
    return predictor_lib.Predictor.load(description["workdir"], description.get("step"))


def build_index(embedder, source: str | Sequence[str], out: str | Path, *, limit: int = 0) -> dict:
    """Embed the videos of `source` (a split of the run's data set, or video files / folders) with
    `embedder` (a `Predictor`, or `kinetics.KineticsBridge`) into the index at `out`, creating it or
    appending to it. Returns counts for the report."""
    from tqdm import tqdm
    description = embedder.description()
    clips = embedder.clip_source(source, limit)  # a bad source fails before an index exists
    out = Path(out)
    if (out / "index.json").is_file():
        index = Index.open(out)
        if {"encoder": "run", **index.model} != description:  # indexes written before "encoder" were runs
            raise UserError(f"the index at {out} was embedded by {index.model}, not {description}; use a new --out")
    else:
        index = Index.create(out, dim=embedder.dim, model=description)
    before = len(index)
    with tqdm(total=clips.count, unit="clip", desc="embedding", dynamic_ncols=True) as progress:
        ids: list[str] = []  # only ids and metadata wait for the commit, not the frames
        metadata: list[dict] = []
        pending: list[np.ndarray] = []
        for done, embeddings in _chunks(embedder, clips, progress):
            ids.extend(c.id for c in done)
            metadata.extend({"id": c.id, **c.metadata} for c in done)
            pending.append(embeddings)
            if len(ids) >= ADD_EVERY:
                index.add(ids, np.concatenate(pending), metadata)
                ids, metadata, pending = [], [], []
        if ids:
            index.add(ids, np.concatenate(pending), metadata)
    return {"index": str(out), "added": len(index) - before, "total": len(index), "skipped": len(clips.skipped),
            "skipped_files": [f"{path}: {reason}" for path, reason in clips.skipped]}


def _chunks(embedder, clips: predictor_lib.ClipSource, progress):
    """(clips, embeddings) one model batch at a time."""
    batch: list[predictor_lib.Clip] = []
    for clip in clips.clips:
        batch.append(clip)
        if len(batch) == embedder.batch_size:
            yield embedder.embed_videos(batch, on_batch=progress.update)
            batch = []
    if batch:
        yield embedder.embed_videos(batch, on_batch=progress.update)


@dataclasses.dataclass
class Hit:
    rank: int
    id: str
    score: float
    metadata: dict


class Searcher:
    """An index with the model that embedded it, loaded once for any number of queries."""

    def __init__(self, index_path: str | Path):
        self.index = Index.open(index_path)
        if not len(self.index):
            raise UserError(f"the index at {index_path} is empty")

    @functools.cached_property
    def embedder(self):
        """The embedding model, loaded at the first query (a bad query fails without loading it)."""
        return load_embedder(self.index.model)

    def query(self, text: str, k: int = 10, *, approximate: bool = False, nprobe: int | None = None) -> list[Hit]:
        """The k videos closest to `text` (best first); `approximate` and `nprobe` as `Index.search`."""
        if not text.strip():
            raise UserError("the query is empty")
        scores, positions = self.index.search(self.embedder.embed_texts([text]), k, approximate=approximate,
                                              nprobe=nprobe)
        return [Hit(rank + 1, self.index.ids[p], float(s), self.index.metadata(p))
                for rank, (s, p) in enumerate(zip(scores[0], positions[0])) if p >= 0]

    def contact_sheet(self, hits: list[Hit]) -> Image.Image:
        """One row per hit: its frames, then rank, id, score and first caption."""
        if not hits:
            raise UserError("no hits to draw")
        return show.contact_sheet([{"id": f"#{hit.rank}  {hit.id}  ({hit.score:.3f})",
                                    "video": self.embedder.frames_of(hit.metadata),
                                    "captions": hit.metadata.get("captions", [])} for hit in hits])
