"""Video search: embed videos into an on-disk index with a trained run, then query it with text.

    vlm search index --workdir runs/pretrain --source test --out index/     # or --source clips/ a.mp4
    vlm search query --index index/ "a red circle moves left" -k 10 --sheet hits.png

An index remembers the run and checkpoint step that embedded it; queries load that same model, and
adding videos with a different one is refused (the embedding spaces would not match).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.apps import predictor as predictor_lib
from vlm_jax.apps.index import Index, top_k
from vlm_jax.data import pipeline, show, video_io
from vlm_jax.errors import UserError

ADD_EVERY = 50_000  # clips embedded between index commits: a crash loses at most this many


def build_index(workdir: str | Path, source: str | Sequence[str], out: str | Path, *, step: int | None = None,
                limit: int = 0) -> dict:
    """Embed the videos of `source` (a split of the run's data set, or video files / folders) into the
    index at `out`, creating it or appending to it. Returns counts for the report."""
    from tqdm import tqdm
    predictor = predictor_lib.Predictor.load(workdir, step)
    description = predictor.description()
    clips = predictor_lib.clip_source(predictor.run, source, limit)  # a bad source fails before an index exists
    out = Path(out)
    if (out / "index.json").is_file():
        index = Index.open(out)
        if any(index.model.get(key) != description[key] for key in ("workdir", "step")):
            raise UserError(f"the index at {out} was embedded by {index.model.get('workdir')} step "
                            f"{index.model.get('step')}, not {description['workdir']} step {description['step']}; "
                            f"use a new --out")
    else:
        index = Index.create(out, dim=int(predictor.run.config.model.embed_dim), model=description)
    before = len(index)
    with tqdm(total=clips.count, unit="clip", desc="embedding", dynamic_ncols=True) as progress:
        ids: list[str] = []  # only ids and metadata wait for the commit, not the frames
        metadata: list[dict] = []
        pending: list[np.ndarray] = []
        for done, embeddings in _chunks(predictor, clips, progress):
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


def _chunks(predictor, clips: predictor_lib.ClipSource, progress):
    """(clips, embeddings) one model batch at a time."""
    batch: list[predictor_lib.Clip] = []
    for clip in clips.clips:
        batch.append(clip)
        if len(batch) == predictor.batch_size:
            yield predictor.embed_videos(batch, on_batch=progress.update)
            batch = []
    if batch:
        yield predictor.embed_videos(batch, on_batch=progress.update)


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
        if "workdir" not in self.index.model:
            raise UserError(f"the index at {index_path} does not name the run that embedded it")

    @functools.cached_property
    def predictor(self) -> predictor_lib.Predictor:
        """The embedding model, loaded at the first query (a bad query fails without loading it)."""
        return predictor_lib.Predictor.load(self.index.model["workdir"], self.index.model.get("step"))

    def query(self, text: str, k: int = 10, *, approximate: bool = False) -> list[Hit]:
        """The k videos closest to `text` (best first)."""
        if not text.strip():
            raise UserError("the query is empty")
        scores, positions = top_k(self.predictor.embed_texts([text]), self.index.embeddings, k,
                                  approximate=approximate)
        return [Hit(rank + 1, self.index.ids[p], float(s), self.index.metadata(p))
                for rank, (s, p) in enumerate(zip(scores[0], positions[0])) if p >= 0]

    def contact_sheet(self, hits: list[Hit]) -> Image.Image:
        """One row per hit: its frames, then rank, id, score and first caption."""
        if not hits:
            raise UserError("no hits to draw")
        return show.contact_sheet([{"id": f"#{hit.rank}  {hit.id}  ({hit.score:.3f})",
                                    "video": _frames(self.predictor, hit.metadata),
                                    "captions": hit.metadata.get("captions", [])} for hit in hits])


def _frames(predictor: predictor_lib.Predictor, metadata: dict) -> np.ndarray:
    run = predictor.run
    if metadata.get("source") == "dataset":
        _, source = pipeline.open_split(run.spec, metadata["split"])
        return source[int(metadata["position"])]["video"]
    return video_io.decode_video(metadata["path"], int(run.config.data.num_frames),
                                 int(run.config.data.image_size)).frames
