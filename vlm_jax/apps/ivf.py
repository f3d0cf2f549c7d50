"""Approximate top-k on a CPU: faiss's inverted-file index (IVF), calibrated for a recall and kept on disk.

The keys are split among `nlist` k-means cells (4 sqrt(N), the low end of faiss's advice of 4 to 16
sqrt(N), and at most N / 39 so that k-means has its 39 points per cell), and a query scores only the keys
of its `nprobe` nearest cells. How many cells a query must
visit for a given recall depends on the data: embeddings that cluster keep a query's neighbours in a few
cells, while keys with no structure (the bench's random unit vectors) spread them over all of them. So
`InvertedFile.build` calibrates: it keeps the smallest power-of-two `nprobe` whose recall@10 against exact
search reaches the target on a sample of the keys themselves as queries (each one's own row left out).
docs/bench.md has the measurements on both kinds of keys.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, BinaryIO

import numpy as np

from vlm_jax.errors import UserError

# Visiting more than this share of the cells is slower than exact search: faiss scans a cell's keys without
# BLAS, so over 1M x 256 random keys (1,000 queries, 2 CPU cores) 1/16 of 4,096 cells ran at 1.45x
# `IndexFlatIP`'s speed and 1/8 of 1,024 cells at 0.81x (docs/bench.md).
MAX_CELL_SHARE = 1 / 8
CALIBRATION_QUERIES = 256
CALIBRATION_K = 10
MIN_KEYS = 4096  # below this, exact search takes milliseconds and k-means has few points per cell
TRAINING_POINTS_PER_CELL = 39  # faiss's k-means warns below this many
_ADD_ROWS = 1 << 16  # rows added at a time, so a memory-mapped index is not read whole into memory
_FINGERPRINT_ROWS = 1024


@dataclasses.dataclass
class InvertedFile:
    """A trained and filled `faiss.IndexIVFFlat` (inner product), the keys it holds (their count and
    `fingerprint`) and what its calibration chose."""
    index: Any
    count: int
    fingerprint: int
    nprobe: int
    calibrated_recall: float

    @classmethod
    def build(cls, keys: np.ndarray, recall_target: float = 0.95, seed: int = 0) -> InvertedFile:
        """Train the cells on a sample of `keys` [N, D] (N >= `MIN_KEYS`), add every key and calibrate
        `nprobe` for `recall_target` (every cell when no smaller power of two reaches it)."""
        import faiss

        n, dim = keys.shape
        if n < MIN_KEYS:
            raise ValueError(f"an inverted file needs at least {MIN_KEYS} keys, got {n}")
        nlist = min(round(4 * math.sqrt(n)), n // TRAINING_POINTS_PER_CELL)
        rng = np.random.default_rng(seed)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = np.sort(rng.choice(n, min(n, TRAINING_POINTS_PER_CELL * nlist), replace=False))
        index.train(np.ascontiguousarray(keys[sample], np.float32))
        for start in range(0, n, _ADD_ROWS):
            index.add(np.ascontiguousarray(keys[start:start + _ADD_ROWS], np.float32))

        rows = np.sort(rng.choice(n, min(n, CALIBRATION_QUERIES), replace=False))
        queries = np.ascontiguousarray(keys[rows], np.float32)
        _, exact = faiss.knn(queries, np.ascontiguousarray(keys, np.float32), CALIBRATION_K + 1,
                             metric=faiss.METRIC_INNER_PRODUCT)
        exact = _without_own_rows(exact, rows)
        nprobe = 1
        while True:
            index.nprobe = nprobe
            _, found = index.search(queries, CALIBRATION_K + 1)
            recall = float(np.mean([len(set(a.tolist()) & set(e.tolist())) / CALIBRATION_K
                                    for a, e in zip(_without_own_rows(found, rows), exact)]))
            if recall >= recall_target or nprobe >= nlist:
                return cls(index, n, fingerprint(keys), nprobe, recall)
            nprobe = min(2 * nprobe, nlist)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def faster_than_exact(self) -> bool:
        """Whether the calibrated `nprobe` visits at most `MAX_CELL_SHARE` of the cells."""
        return self.nprobe <= MAX_CELL_SHARE * self.nlist

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], indices [Q, k]) from the `nprobe` nearest cells (default the calibrated one), best
        first; where those cells hold fewer than k keys the rows end in score -inf and index -1."""
        nprobe = self.nprobe if nprobe is None else nprobe
        if not 1 <= nprobe <= self.nlist:
            raise UserError(f"nprobe must be between 1 and the index's {self.nlist} cells, got {nprobe}")
        self.index.nprobe = nprobe
        scores, indices = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return np.where(indices >= 0, scores, -np.inf).astype(np.float32), indices.astype(np.int64)

    def info(self) -> dict:
        """What `read` checks before trusting a saved inverted file, and what its calibration chose."""
        return {"count": self.count, "fingerprint": self.fingerprint, "nlist": self.nlist, "nprobe": self.nprobe,
                "calibrated_recall": self.calibrated_recall}

    def write(self, file: BinaryIO) -> None:
        """The faiss index into an open binary file, in faiss's own format (never a pickle), streamed."""
        import faiss

        faiss.write_index(self.index, faiss.PyCallbackIOWriter(file.write))

    @classmethod
    def read(cls, file: BinaryIO, info: dict, keys: np.ndarray) -> InvertedFile | None:
        """The inverted file `write` put in `file`, with its `info`, if it holds `keys` (their count and
        `fingerprint`); None when it is stale (the index has grown or been rebuilt since) or unreadable."""
        import faiss

        try:
            if int(info["count"]) != len(keys) or int(info["fingerprint"]) != fingerprint(keys):
                return None
            index = faiss.read_index(faiss.PyCallbackIOReader(file.read))
            inverted_file = cls(index, len(keys), int(info["fingerprint"]), int(info["nprobe"]),
                                float(info["calibrated_recall"]))
        except (ValueError, KeyError, TypeError, RuntimeError):
            return None
        return inverted_file if index.ntotal == len(keys) else None


def fingerprint(keys: np.ndarray) -> int:
    """A CRC-32 of up to `_FINGERPRINT_ROWS` evenly spaced rows and the last one: different keys of the same
    count (an index deleted and built again) are told apart without reading a large index whole."""
    rows = np.unique(np.append(np.linspace(0, len(keys) - 1, min(len(keys), _FINGERPRINT_ROWS)).astype(int),
                               len(keys) - 1))
    return zlib.crc32(np.ascontiguousarray(keys[rows], np.float32).tobytes())


def _without_own_rows(found: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each query's neighbours [Q, k + 1] less the query's own row (or, where it is not there, the last)."""
    kept = []
    for neighbours, row in zip(found.tolist(), rows.tolist()):
        kept.append([i for i in neighbours if i != row][:len(neighbours) - 1])
    return np.array(kept, np.int64)
