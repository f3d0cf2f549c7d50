"""An on-disk embedding index and exact (or approximate) top-k search over it.

Two engines search: faiss (`faiss.knn`, BLAS scoring and a heap per query) where JAX runs on the CPU and
faiss is installed, and blocks of XLA matmuls with `lax.top_k` otherwise (accelerators); docs/bench.md's
"Measurements quoted by the code" says why.

Layout of an index directory:
  embeddings.npy   float32 [rows, D], unit-norm rows
  ids.json         list of unique string ids, one per row
  metadata.jsonl   one JSON object per row (source path, split, captions, attributes, ...)
  index.json       {"format_version", "dim", "count", "model": {...what produced the embeddings}}
  ivf.faiss(.json) the inverted file of approximate search (`ivf.py`), written by the first approximate
                   query and again by the first one after an `add`

`index.json`'s `count` is the commit point. `add` writes every new file to a temporary name in the
directory, renames the three data files over the old ones and renames `index.json` last, so a process
that dies mid-add leaves the old count in force: the data files may then hold extra rows past `count`
(the new rows, all appended after the old ones), which `open` ignores and the next `add` overwrites.
Only one process may write an index at a time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.apps.ivf import MIN_KEYS, InvertedFile
from vlm_jax.errors import UserError

FORMAT_VERSION = 1
_EMBEDDINGS, _IDS, _METADATA, _INFO = "embeddings.npy", "ids.json", "metadata.jsonl", "index.json"
_INVERTED_FILE, _INVERTED_FILE_INFO = "ivf.faiss", "ivf.faiss.json"


def _normalise(x: np.ndarray, what: str) -> np.ndarray:
    """Rows scaled to unit norm (computed in float64); a zero or non-finite row is an error, not NaNs."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise UserError(f"{what} row {bad[0]} is zero or not finite; it cannot be normalised")
    return (x / norms).astype(np.float32)


def _commit(path: Path, old: np.ndarray, new: np.ndarray, ids: list[str], new_lines: list[str],
            info: dict) -> None:
    """Write the committed rows `old` plus `new` (and all `ids`, the first len(old) metadata lines plus
    `new_lines`, and `info`) to temporary files, then rename them into place, `index.json` last."""
    def embeddings(f):
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (len(old) + len(new), new.shape[1])}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(old), 1 << 16):
            f.write(np.ascontiguousarray(old[start:start + (1 << 16)], np.float32).tobytes())
        f.write(np.ascontiguousarray(new, np.float32).tobytes())

    def metadata(f):
        if len(old):
            with open(path / _METADATA, "rb") as old_file:
                for _, line in zip(range(len(old)), old_file):
                    f.write(line)
        f.write("".join(line + "\n" for line in new_lines).encode())

    tmps = [_write_temporary(path / _EMBEDDINGS, embeddings),
            _write_temporary(path / _IDS, lambda f: f.write(json.dumps(ids).encode())),
            _write_temporary(path / _METADATA, metadata),
            _write_temporary(path / _INFO, lambda f: f.write(json.dumps(info, indent=2).encode()))]
    for tmp, name in zip(tmps, (_EMBEDDINGS, _IDS, _METADATA, _INFO)):
        os.replace(tmp, path / name)


def _write_temporary(path: Path, write) -> Path:
    """`write(file)` into a temporary file next to `path`, synced to disk; returns the temporary path."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


class Index:
    """Embeddings, ids and per-row metadata of a directory; see the module docstring for the layout."""

    def __init__(self, path: Path, info: dict, ids: list[str], metadata: list[dict]):
        self.path, self._info, self._ids, self._metadata = path, info, ids, metadata
        self._positions: dict[str, int] | None = None
        self._inverted_file: InvertedFile | None = None
        self._embeddings = self._load_embeddings()

    @classmethod
    def create(cls, path: str | Path, dim: int, model: dict) -> Index:
        """An empty index at `path` (created if needed; an existing index there is an error)."""
        path = Path(path)
        if (path / _INFO).exists():
            raise UserError(f"an index already exists at {path}")
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} exists and is not a directory")
        if int(dim) < 1:
            raise UserError(f"index dim must be positive, got {dim}")
        path.mkdir(parents=True, exist_ok=True)
        info = {"format_version": FORMAT_VERSION, "dim": int(dim), "count": 0, "model": dict(model)}
        empty = np.zeros((0, int(dim)), np.float32)
        _commit(path, empty, empty, [], [], info)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> Index:
        """The committed state of the index at `path`; missing or inconsistent files are a UserError."""
        path = Path(path)
        if not (path / _INFO).is_file():
            raise UserError(f"no index at {path} (missing {_INFO}); create one first")
        try:
            info = json.loads((path / _INFO).read_text())
            count = int(info["count"])
            int(info["dim"])  # present and an integer
            version = info["format_version"]
            if not isinstance(info["model"], dict):
                raise TypeError("model is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"corrupt {path / _INFO}: {e}") from None
        if version != FORMAT_VERSION:
            raise UserError(f"{path} has index format {version}; this code reads format {FORMAT_VERSION}")
        try:
            ids = json.loads((path / _IDS).read_text())
            with open(path / _METADATA) as f:
                metadata = [json.loads(line) for _, line in zip(range(count), f)]
        except (OSError, ValueError) as e:
            raise UserError(f"corrupt index at {path}: {e}") from None
        if not isinstance(ids, list) or len(ids) < count or len(metadata) < count:
            raise UserError(f"corrupt index at {path}: {_INFO} says {count} rows but {_IDS} holds "
                            f"{len(ids) if isinstance(ids, list) else 'no list of'} ids and {_METADATA} "
                            f"{len(metadata)} rows")
        ids = ids[:count]
        if len(set(ids)) != count:
            raise UserError(f"corrupt index at {path}: {_IDS} repeats ids")
        return cls(path, info, ids, metadata)

    def _load_embeddings(self) -> np.ndarray:
        """The first `count` rows, memory-mapped (later rows are an interrupted add's leftovers)."""
        try:
            embeddings = np.load(self.path / _EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"corrupt index at {self.path}: {e}") from None
        if embeddings.ndim != 2 or embeddings.dtype != np.float32 or embeddings.shape[1] != self.dim \
                or len(embeddings) < len(self):
            raise UserError(f"corrupt index at {self.path}: {_EMBEDDINGS} is {embeddings.dtype} "
                            f"{embeddings.shape}, expected float32 [>={len(self)}, {self.dim}]")
        return embeddings[:len(self)]

    def __len__(self) -> int:
        return int(self._info["count"])

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

    @property
    def model(self) -> dict:
        """What produced the embeddings (free-form, as given to `create`)."""
        return self._info["model"]

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def embeddings(self) -> np.ndarray:
        """float32 [N, D], unit-norm rows, memory-mapped read-only."""
        return self._embeddings

    def metadata(self, i: int) -> dict:
        return self._metadata[i]

    def position(self, id: str) -> int:
        """The row of `id`."""
        if self._positions is None:
            self._positions = {x: i for i, x in enumerate(self._ids)}
        if id not in self._positions:
            raise UserError(f"no item {id!r} in the index at {self.path}")
        return self._positions[id]

    def search(self, queries: np.ndarray, k: int, *, approximate: bool = False, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """`top_k` over the rows. `approximate`, where faiss is the engine and the index holds at least
        `ivf.MIN_KEYS` rows, searches the inverted file (built and calibrated for recall@10 >= 0.95 at the
        first such query, or the first after an `add`, and kept beside the index), visiting `nprobe` cells
        (default the calibrated number, unless that would be slower than exact search: then the search is
        exact); elsewhere it is `top_k`'s (the jax engine's `approx_max_k`, or exact faiss on an index too
        small to split)."""
        engine = default_engine()
        if not (approximate and engine == "faiss" and len(self) >= MIN_KEYS):
            if nprobe is not None:
                raise UserError(f"nprobe applies to approximate search with faiss over at least {MIN_KEYS} rows; "
                                f"this index has {len(self)} rows and the engine is {engine}")
            return top_k(queries, self.embeddings, k, approximate=approximate and engine == "jax")
        if self._inverted_file is None:
            self._inverted_file = self._open_inverted_file()
        if nprobe is None and not self._inverted_file.faster_than_exact:
            return top_k(queries, self.embeddings, k)
        return self._inverted_file.search(_normalise(queries, "query"), min(k, len(self)), nprobe)

    def _open_inverted_file(self) -> InvertedFile:
        """The saved inverted file if it holds these rows; else a new one, saved when the directory is
        writable (a read-only index still answers, building it again per process)."""
        inverted_file = self.saved_inverted_file()
        if inverted_file is None:
            inverted_file = InvertedFile.build(self.embeddings)
            info = json.dumps(inverted_file.info(), indent=2).encode()
            try:  # the info last: it says which rows the file holds
                tmps = [_write_temporary(self.path / _INVERTED_FILE, inverted_file.write),
                        _write_temporary(self.path / _INVERTED_FILE_INFO, lambda f: f.write(info))]
                for tmp, name in zip(tmps, (_INVERTED_FILE, _INVERTED_FILE_INFO)):
                    os.replace(tmp, self.path / name)
            except (OSError, RuntimeError) as e:
                print(f"vlm: the inverted file could not be saved in {self.path} ({e}); it lives in memory only",
                      file=sys.stderr)
        return inverted_file

    def saved_inverted_file(self) -> InvertedFile | None:
        """The inverted file saved beside the index, if there is one and it holds these rows."""
        try:
            info = json.loads((self.path / _INVERTED_FILE_INFO).read_text())
            with open(self.path / _INVERTED_FILE, "rb") as f:
                return InvertedFile.read(f, info, self.embeddings)
        except (OSError, ValueError):
            return None

    def add(self, ids: list[str], embeddings: np.ndarray, metadata: list[dict] | None = None) -> None:
        """Append rows (embeddings are re-normalised) and commit them atomically; see the module docstring."""
        ids = list(ids)
        metadata = [{} for _ in ids] if metadata is None else list(metadata)
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise UserError(f"embeddings of shape {embeddings.shape} do not fit an index of dim {self.dim}")
        if not len(ids) == len(embeddings) == len(metadata):
            raise UserError(f"add got {len(ids)} ids, {len(embeddings)} embeddings and {len(metadata)} "
                            "metadata rows; they must match")
        seen = set(self._ids)
        for x in ids:
            if not isinstance(x, str):
                raise UserError(f"index ids must be strings, got {x!r}")
            if x in seen:
                raise UserError(f"duplicate id {x!r}: ids in an index must be unique")
            seen.add(x)
        for i, row in enumerate(metadata):
            if not isinstance(row, dict):
                raise UserError(f"metadata row {i} is a {type(row).__name__}, not a dict")
        try:
            lines = [json.dumps(row) for row in metadata]
        except (TypeError, ValueError) as e:
            raise UserError(f"metadata is not JSON-serialisable: {e}") from None
        new = _normalise(embeddings, "embedding")
        info = {**self._info, "count": len(self) + len(ids)}
        _commit(self.path, self._embeddings, new, self._ids + ids, lines, info)
        self._info, self._ids = info, self._ids + ids
        self._metadata = self._metadata + [json.loads(line) for line in lines]
        self._positions = None
        self._inverted_file = None
        self._embeddings = self._load_embeddings()


def _merge_block(best_scores, best_indices, queries, block, offset, valid, *, k: int, approximate: bool):
    """Score one padded key block (rows >= `valid` score -inf) and merge its top-k into the running best.
    Running-best entries come first in the concatenation and hold lower indices, and top_k prefers the
    earlier of equal values, so ties go to the lower index."""
    scores = jnp.dot(queries, block.T, precision=jax.lax.Precision.HIGHEST)
    scores = jnp.where(jnp.arange(block.shape[0]) < valid, scores, -jnp.inf)
    block_k = min(k, block.shape[0])
    if approximate:
        scores, indices = jax.lax.approx_max_k(scores, block_k, recall_target=0.95)
    else:
        scores, indices = jax.lax.top_k(scores, block_k)
    scores = jnp.concatenate([best_scores, scores], axis=1)
    indices = jnp.concatenate([best_indices, indices + offset], axis=1)
    scores, order = jax.lax.top_k(scores, k)
    return scores, jnp.take_along_axis(indices, order, axis=1)


_merge_block_jit = jax.jit(_merge_block, static_argnames=("k", "approximate"))
ENGINES = ("faiss", "jax")


def default_engine() -> str:
    """faiss where JAX runs on the CPU and faiss is installed; jax otherwise."""
    return "faiss" if jax.default_backend() == "cpu" and importlib.util.find_spec("faiss") else "jax"


def _faiss_top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k by faiss, with equal scores ordered lower index first as the jax engine
    orders them (faiss keeps the earlier of equal keys but returns equal scores in no set order)."""
    import faiss
    scores, indices = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(keys, np.float32),
                                k, metric=faiss.METRIC_INNER_PRODUCT)
    order = np.lexsort((indices, -scores), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


def top_k(queries: np.ndarray, keys: np.ndarray, k: int, block_size: int = 8192, approximate: bool = False,
          exclude: list[set[int]] | None = None, engine: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k keys with the highest dot product with each query: (scores [Q, k], indices [Q, k]), best first.

    Queries are normalised here (a zero query is an error); keys are used as given (an index's rows are
    unit norm). Keys are scored in blocks of `block_size` rows, so N may far exceed device memory for one
    score matrix; the last block is padded so one compiled function serves every block. 8192 rows keep a
    1000-query score block (32 MB) near the cache (docs/bench.md has the measurement). Equal scores rank
    the lower index first (exact mode). k above N is clamped to N. `approximate` takes each block's
    top-k with `approx_max_k` (recall target 0.95, exact on CPU) instead of an exact top_k; on a CPU,
    `Index.search` searches approximately with an inverted file instead (`ivf.py`).
    `engine`: "faiss" or "jax" (default: `default_engine()`); `block_size` and `approximate` are the jax
    engine's, so an approximate search runs there.

    `exclude[q]` is a set of key positions query q must not return. A [Q, N] mask would not fit for
    millions of keys, so k + max(len(exclude[q])) keys are retrieved and the excluded ones filtered out;
    where fewer than k keys remain (only when k + excluded exceeds N), rows are padded with score -inf
    and index -1.
    """
    queries, keys = np.asarray(queries), np.asarray(keys)
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise UserError(f"top_k needs queries [Q, D] and keys [N, D], got {queries.shape} and {keys.shape}")
    if k < 1 or block_size < 1:
        raise UserError(f"top_k needs k >= 1 and block_size >= 1, got k={k}, block_size={block_size}")
    if exclude is not None and len(exclude) != len(queries):
        raise UserError(f"exclude has {len(exclude)} sets for {len(queries)} queries")
    engine = engine or default_engine()
    if engine not in ENGINES:
        raise UserError(f"unknown search engine {engine!r}; choose {' or '.join(ENGINES)}")
    queries = _normalise(queries, "query")
    n = len(keys)
    k = min(k, n)
    if n == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    wanted = min(n, k + max((len(e) for e in exclude), default=0)) if exclude else k
    if engine == "faiss" and not approximate:
        scores, indices = _faiss_top_k(queries, keys, wanted)
    else:
        scores, indices = _jax_top_k(jnp.asarray(queries), keys, wanted, block_size, approximate)
    if not exclude:
        return scores, indices
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_indices = np.full((len(queries), k), -1, np.int64)
    for q, excluded in enumerate(exclude):
        keep = np.array([i not in excluded for i in indices[q].tolist()], bool)
        kept = min(k, int(keep.sum()))
        out_scores[q, :kept] = scores[q][keep][:k]
        out_indices[q, :kept] = indices[q][keep][:k]
    return out_scores, out_indices


def _jax_top_k(queries: jax.Array, keys: np.ndarray, wanted: int, block_size: int, approximate: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    n = len(keys)
    best_scores = jnp.full((len(queries), wanted), -jnp.inf, jnp.float32)
    best_indices = jnp.full((len(queries), wanted), -1, jnp.int32)
    size = min(block_size, n)
    for start in range(0, n, size):
        block = np.asarray(keys[start:start + size], np.float32)
        valid = len(block)
        if valid < size:
            block = np.concatenate([block, np.zeros((size - valid, block.shape[1]), np.float32)])
        best_scores, best_indices = _merge_block_jit(best_scores, best_indices, queries, jnp.asarray(block),
                                                     np.int32(start), np.int32(valid), k=wanted,
                                                     approximate=approximate)
    return np.asarray(best_scores), np.asarray(best_indices).astype(np.int64)
