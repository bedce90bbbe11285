"""The persistent caption index: clip embeddings -> their captions, searched with hnswlib.

Knows nothing about torch modules: vectors arrive as float32 arrays (from
``retriever.embed``, ``retriever.mean_pool`` or a text embedder). An index directory holds

  ``index.bin``      the hnswlib graph (labels 0..N-1 are entry positions)
  ``entries.jsonl``  one ``{"id": ..., "captions": [...]}`` per entry, in label order
  ``index.json``     the IndexConfig (``config.save_config``) plus the entry count

and is written atomically (the directory is a symlink to a versioned folder, swapped in one
step; see ``config.replace_dir``), so a reader sees a whole index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import hnswlib
import numpy as np

from ..config import check_config, load_config, replace_dir, save_config
from ..errors import AudiocapError, ConfigMismatchError, DatasetError, ModelNotFoundError

CONFIG_NAME = "index.json"
GRAPH_NAME = "index.bin"
ENTRIES_NAME = "entries.jsonl"
SPACES = ("l2", "ip", "cosine")
# Fields that make an index unusable when they differ; M/ef_* only change speed and recall.
MATCH_FIELDS = ("dim", "embedder", "encoder", "space")
# Growth factor when add() outgrows the allocated capacity: amortised O(1) resizes.
GROWTH = 2.0
# hnswlib insertion threads for build() and add(). One, so the same vectors give the same graph
# and the same approximate neighbours: with 2 threads, two builds of 20k vectors answered 2,000
# queries differently (the insertion order decides the graph), and the default model's val
# CIDEr-D moved by 0.3 between rebuilds of its index. Two threads halve the build time (20k x
# 521 dims: 31 s against 65 s on 2 cores); build(threads=) opts in.
INSERT_THREADS = 1


@dataclass(frozen=True)
class IndexConfig:
    """What an index was built from and its HNSW parameters.

    ``embedder``: e.g. ``"retriever:<sha16 of best.safetensors>"`` (``retriever.retriever_id``),
    ``"mean:<encoder fingerprint>"`` (the 1NN baseline) or a text embedder's name.
    HNSW parameters, measured with bench/speed/bench_index.py on 50k clustered 2560-dim unit vectors
    (M = 32, ef_construction = 200): recall@5 vs exact search 0.992 at ef_search 16, 0.999 at
    24, 1.000 at 32 and above; search time grows ~linearly with ef, so ef_search = 32 (twice
    the ef that already reaches 0.99). It is a search-time knob: ``load(expected=...)`` uses
    the caller's, no rebuild needed. Size: 10.3 kB per clip at 2560 dims (504 MiB at 50k).
    """

    dim: int
    embedder: str
    encoder: str
    space: str = "l2"
    M: int = 32
    ef_construction: int = 200
    ef_search: int = 32

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise AudiocapError(
                f"index: space must be one of {', '.join(SPACES)}, not {self.space!r}"
            )
        if self.dim < 1 or self.M < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise AudiocapError("index: dim, M, ef_construction and ef_search must be positive")


@dataclass(frozen=True)
class Hit:
    """One retrieved clip. ``distance``: hnswlib's (squared L2 in the ``l2`` space)."""

    id: str
    captions: tuple[str, ...]
    distance: float


class CaptionIndex:
    """An hnswlib index of clip embeddings with each clip's id and captions."""

    def __init__(
        self,
        cfg: IndexConfig,
        graph: hnswlib.Index,
        ids: list[str],
        captions: list[tuple[str, ...]],
    ) -> None:
        self.config = cfg
        self._graph = graph
        self._ids = ids
        self._captions = captions
        self._label = {cid: i for i, cid in enumerate(ids)}
        self._idf: dict[str, float] | None = None  # ngram_idf(), computed on first use

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        captions: Sequence[Sequence[str]],
        cfg: IndexConfig,
        threads: int = INSERT_THREADS,
    ) -> CaptionIndex:
        """Index ``vectors`` ``[N, dim]`` of the clips ``ids`` with their ``captions``
        (``threads``: hnswlib insertion threads, see ``INSERT_THREADS``)."""
        vecs = _check_vectors(vectors, cfg.dim, "vectors")
        ids, caps = _check_entries(ids, captions, len(vecs))
        dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
        if dupes:
            raise DatasetError("index", [f"duplicate clip id {d!r}" for d in dupes])
        graph = hnswlib.Index(space=cfg.space, dim=cfg.dim)
        graph.init_index(
            max_elements=max(len(vecs), 1), ef_construction=cfg.ef_construction, M=cfg.M
        )
        if len(vecs):
            graph.add_items(vecs, np.arange(len(vecs)), num_threads=threads)
        graph.set_ef(cfg.ef_search)
        return cls(cfg, graph, ids, caps)

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        captions: Sequence[Sequence[str]],
        replace: bool = False,
    ) -> None:
        """Add clips without rebuilding (the graph grows its capacity as needed).

        An id already in the index raises DatasetError, or with ``replace=True`` takes the new
        vector and captions in place (hnswlib updates the element under the same label).
        Duplicates within one call are refused either way.
        """
        vecs = _check_vectors(vectors, self.config.dim, "vectors")
        ids, caps = _check_entries(ids, captions, len(vecs))
        if len(set(ids)) != len(ids):
            raise DatasetError("index add", ["duplicate clip ids in one add() call"])
        existing = [i for i in ids if i in self._label]
        if existing and not replace:
            shown = ", ".join(repr(i) for i in existing[:5])
            raise DatasetError(
                "index add", [f"clip id(s) already indexed: {shown} (pass replace=True to update)"]
            )
        labels = np.empty(len(ids), dtype=np.int64)
        n = len(self._ids)
        self._idf = None  # the captions change
        for j, cid in enumerate(ids):
            if cid in self._label:
                labels[j] = self._label[cid]
                self._captions[labels[j]] = caps[j]
            else:
                labels[j] = n
                self._label[cid] = n
                self._ids.append(cid)
                self._captions.append(caps[j])
                n += 1
        capacity = self._graph.get_max_elements()
        if n > capacity:
            self._graph.resize_index(max(n, int(capacity * GROWTH)))
        if len(vecs):
            self._graph.add_items(vecs, labels, num_threads=INSERT_THREADS)

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path, extra: Callable[[Path], None] | None = None) -> Path:
        """Write the index to ``directory`` atomically; returns it.

        The files are written into a temporary directory that then replaces ``directory`` in
        one step (:func:`config.replace_dir`: ``directory`` is a symlink to the current
        version), so a reader sees the old index or the new one, never none or half of one.
        ``extra(folder)``: writes more files that belong to this version into ``folder``.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp")
        )
        try:
            self._graph.save_index(str(tmp / GRAPH_NAME))
            with open(tmp / ENTRIES_NAME, "w", encoding="utf-8") as f:
                for cid, caps in zip(self._ids, self._captions):
                    f.write(
                        json.dumps({"id": cid, "captions": list(caps)}, ensure_ascii=False) + "\n"
                    )
                f.flush()
                os.fsync(f.fileno())
            if extra is not None:
                extra(tmp)
            save_config(self.config, tmp / CONFIG_NAME, count=len(self._ids))
            replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path, expected: IndexConfig | None = None) -> CaptionIndex:
        """Load an index saved by :meth:`save`.

        ``expected``: the config in use; ``dim``, ``embedder``, ``encoder`` and ``space`` must
        match (ConfigMismatchError naming the fields otherwise) and its ``ef_search`` is used.
        A missing or incomplete directory is a ModelNotFoundError.
        """
        for _ in range(5):  # read one version; one replaced (and deleted) meanwhile: read anew
            real = Path(directory).resolve()
            try:
                return cls._load(real, expected, directory)
            except ModelNotFoundError:
                if Path(directory).resolve() == real:
                    raise
        return cls._load(Path(directory).resolve(), expected, directory)

    @classmethod
    def _load(
        cls, directory: Path, expected: IndexConfig | None, shown: str | Path
    ) -> CaptionIndex:
        if not (directory / CONFIG_NAME).is_file():
            raise ModelNotFoundError(f"{shown}: no caption index here (run `audiocap build-index`)")
        cfg = load_config(IndexConfig, directory / CONFIG_NAME)
        if expected is not None:
            check_config(expected, cfg, f"caption index {shown}", fields=MATCH_FIELDS)
            cfg = replace(cfg, ef_search=expected.ef_search)
        ids: list[str] = []
        caps: list[tuple[str, ...]] = []
        try:
            with open(directory / ENTRIES_NAME, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        ids.append(str(row["id"]))
                        caps.append(tuple(str(c) for c in row["captions"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelNotFoundError(f"{shown}: unreadable {ENTRIES_NAME} ({e})") from e
        graph = hnswlib.Index(space=cfg.space, dim=cfg.dim)
        try:
            graph.load_index(str(directory / GRAPH_NAME), max_elements=max(len(ids), 1))
        except (RuntimeError, OSError) as e:
            raise ModelNotFoundError(f"{shown}: unreadable {GRAPH_NAME} ({e})") from e
        if graph.get_current_count() != len(ids):
            raise ModelNotFoundError(
                f"{shown}: corrupt index ({graph.get_current_count()} vectors, {len(ids)} entries)"
            )
        graph.set_ef(cfg.ef_search)
        return cls(cfg, graph, ids, caps)

    # -- search ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._label

    @property
    def ids(self) -> list[str]:
        """Clip ids in label order (a copy)."""
        return list(self._ids)

    def captions_of(self, clip_id: str) -> tuple[str, ...]:
        return self._captions[self._label[clip_id]]

    def ngram_idf(self) -> dict[str, float]:
        """CIDEr's n-gram idf over every caption in the index (agreement.ngram_idf), computed
        once: what consensus re-ranking and CIDEr-D hypothesis selection weigh n-grams by."""
        if self._idf is None:
            from ..text.agreement import ngram_idf

            self._idf = ngram_idf([c for caps in self._captions for c in caps])
        return self._idf

    def query(
        self,
        vectors: np.ndarray,
        k: int = 5,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest clips of each query ``[B, dim]``, nearest first.

        ``exclude_ids[b]``: the query clip's own id (or None). When that clip is in the index
        it is never returned (k+1 neighbours are searched and it is dropped), so guidance for
        a training clip never leaks its own captions. Only the same id is excluded: other
        clips with identical captions are legitimate neighbours. Fewer than ``k`` hits come
        back only when the index holds fewer clips.
        """
        vecs = _check_vectors(vectors, self.config.dim, "query vectors")
        b = len(vecs)
        if k < 1:
            raise AudiocapError(f"index query: k must be >= 1, not {k}")
        if exclude_ids is not None and len(exclude_ids) != b:
            raise AudiocapError(f"index query: {len(exclude_ids)} exclude ids for {b} queries")
        if b == 0 or not self._ids:
            return [[] for _ in range(b)]
        excl = np.full(b, -1, dtype=np.int64)
        if exclude_ids is not None:
            excl[:] = [self._label.get(e, -1) if e is not None else -1 for e in exclude_ids]
        k_search = min(k + int((excl >= 0).any()), len(self._ids))
        self._graph.set_ef(max(self.config.ef_search, k_search))
        labels, dists = self._graph.knn_query(vecs, k=k_search)  # [B, k_search] each
        keep = labels != excl[:, None]
        # Per row keep the first k non-excluded: rank of each kept column among kept ones.
        keep &= np.cumsum(keep, axis=1) <= k
        out: list[list[Hit]] = []
        for row_l, row_d, row_k in zip(labels.tolist(), dists.tolist(), keep.tolist()):
            out.append(
                [
                    Hit(self._ids[j], self._captions[j], float(d))
                    for j, d, m in zip(row_l, row_d, row_k)
                    if m
                ]
            )
        return out


def guidance(hits: Sequence[Hit], k: int, per_clip: int = 1) -> list[str]:
    """The guidance captions of one query: the first ``per_clip`` captions of each of its
    ``k`` nearest clips, nearest first.

    The paper retrieves the K (=5) nearest AudioCaps train clips, which hold one caption
    each, so ``per_clip=1`` gives K captions; for multi-caption clips (Clotho, AudioCaps
    val) it takes each clip's first caption, keeping K captions from K distinct sounds.
    """
    out: list[str] = []
    for hit in hits[:k]:
        out.extend(hit.captions[:per_clip])
    return out


def _check_vectors(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[1] != dim:
        raise ConfigMismatchError(
            f"{what} have shape {list(v.shape)}, but the index holds {dim}-dim vectors"
        )
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.isfinite(v).all():
        raise AudiocapError(f"{what} contain NaN or infinite values")
    return v


def _check_entries(
    ids: Sequence[str], captions: Sequence[Sequence[str]], n: int
) -> tuple[list[str], list[tuple[str, ...]]]:
    ids = [str(i) for i in ids]
    if len(ids) != n or len(captions) != n:
        raise DatasetError(
            "index", [f"{n} vectors, {len(ids)} ids and {len(captions)} caption lists"]
        )
    caps = [(c,) if isinstance(c, str) else tuple(str(x) for x in c) for c in captions]
    empty = [i for i, c in zip(ids, caps) if not c]
    if empty:
        raise DatasetError("index", [f"clip {i!r} has no caption" for i in empty[:10]])
    return ids, caps
