"""Image embeddings of 2D SAM-family teachers, computed once per slice and reused.

SAM's design separates a heavy image encoder from a light prompt encoder and mask
decoder, so that one embedding serves every prompt (Kirillov et al., "Segment Anything",
2023, section 3). LiteMedSAM's encoder costs about 75 GFLOP per 256x256 slice (measured
with ``torch.utils.flop_counter``), roughly 3 s of a 2-core CPU, while its decoder takes
about 0.2 s: re-prompting a case (a new distillation round, ground-truth boxes beside the
student's, a radiologist's correction) should only re-run the decoder.

Embeddings are keyed by the teacher's weights (``weights_sha256``, LoRA adapters
included) and the SHA-256 of the preprocessed slice tensor, so a changed image, window or
weight never reuses a stale entry. They are kept in memory (least recently used first
out, bounded in bytes) and, when a folder is given, on disk as float32 ``.npy`` files
written atomically (4 MiB per LiteMedSAM slice): a later process (the next seed of a
benchmark, the next ``distillseg predict --teacher``) reads them back bit for bit.

One store per process (:func:`default_store`) bounds every slice-wise teacher at once:
prompting, distillation rounds, teacher tuning (:class:`~.slicewise.SliceSession` keeps
no embeddings of its own) and the demo. What must not reach the disk (embeddings of an
encoder with LoRA adapters being tuned, or a benchmark that times the encoder) goes
through :meth:`EmbeddingStore.memory_only`, which shares the same bounded memory.
Entries are copies: a slice's 4 MiB never keeps its whole encoder batch alive.

Environment: ``DISTILLSEG_EMBEDDING_MEMORY_MB`` (default 2048) bounds the memory part;
``DISTILLSEG_EMBEDDING_DISK_GB`` (default 10) the disk part, oldest files deleted first;
``DISTILLSEG_EMBEDDING_CACHE=0`` switches the disk part off (default: on, under the
teachers' cache folder, ``$DISTILLSEG_CACHE/embeddings``).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

MEMORY_ENV = "DISTILLSEG_EMBEDDING_MEMORY_MB"
DISK_ENV = "DISTILLSEG_EMBEDDING_CACHE"
DISK_LIMIT_ENV = "DISTILLSEG_EMBEDDING_DISK_GB"
DEFAULT_MEMORY_MB = 2048
DEFAULT_DISK_GB = 10.0


def slice_digest(weights_sha256: str, image) -> str:
    """Key of one preprocessed slice ``(3, N, N)`` for the teacher with ``weights_sha256``."""
    array = np.ascontiguousarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    digest = hashlib.sha256(weights_sha256.encode())
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


class EmbeddingStore:
    """Slice embeddings in memory (LRU, ``memory_bytes``) and optionally in ``folder``
    (at most ``disk_bytes``; the least recently written files go first)."""

    def __init__(self, folder: str | os.PathLike | None = None, memory_bytes: int = DEFAULT_MEMORY_MB << 20,
                 disk_bytes: int = int(DEFAULT_DISK_GB * (1 << 30))) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.memory_bytes = int(memory_bytes)
        self.disk_bytes = int(disk_bytes)
        self._disk_used: int | None = None  # measured on the first write
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str, from_disk: bool = True) -> np.ndarray | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if from_disk and self.folder is not None and self._path(key).exists():
            try:
                array = np.load(self._path(key), allow_pickle=False)
            except (OSError, ValueError, EOFError):
                array = None  # unreadable entry: recompute and overwrite
            if array is not None:
                self._remember(key, array)
                self.hits += 1
                return array
        self.misses += 1
        return None

    @property
    def memory_used(self) -> int:
        """Bytes of the embeddings held in memory (each entry owns its data)."""
        return self._used

    def __len__(self) -> int:
        return len(self._memory)

    def memory_only(self) -> "MemoryOnlyStore":
        """This store's memory part alone (no disk read or write), bounded with the rest."""
        return MemoryOnlyStore(self)

    def put(self, key: str, embedding: np.ndarray, persist: bool = True) -> None:
        """Keep a copy of ``embedding`` (a view of an encoder batch would keep the whole
        batch alive while counting one slice); written to the folder when ``persist``."""
        embedding = np.array(embedding, dtype=np.float32, order="C", copy=True)
        self._remember(key, embedding)
        if self.folder is not None and persist:
            with atomic_path(self._path(key)) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, embedding, allow_pickle=False)
            self._account(self._path(key).stat().st_size)

    def _account(self, written: int) -> None:
        """Keep the folder under ``disk_bytes``: delete the oldest files down to 90% of it."""
        if self._disk_used is None:
            self._disk_used = sum(p.stat().st_size for p in self.folder.rglob("*.npy"))
        else:
            self._disk_used += written
        if self._disk_used <= self.disk_bytes:
            return
        files = sorted(self.folder.rglob("*.npy"), key=lambda p: p.stat().st_mtime)
        self._disk_used = sum(p.stat().st_size for p in files)
        for path in files:
            if self._disk_used <= 0.9 * self.disk_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            self._disk_used -= size

    def _remember(self, key: str, embedding: np.ndarray) -> None:
        if embedding.nbytes > self.memory_bytes:
            return
        if key in self._memory:
            self._used -= self._memory.pop(key).nbytes
        self._memory[key] = embedding
        self._used += embedding.nbytes
        while self._used > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._used -= old.nbytes


class MemoryOnlyStore:
    """The memory part of an :class:`EmbeddingStore`, without its folder: same entries,
    same bound (what is put here may be evicted by the rest, and the other way round)."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store

    def get(self, key: str) -> np.ndarray | None:
        return self.store.get(key, from_disk=False)

    def put(self, key: str, embedding: np.ndarray) -> None:
        self.store.put(key, embedding, persist=False)


def encode_with_store(encoder, images, weights_sha256: str, store: "EmbeddingStore | MemoryOnlyStore | None",
                      device: str = "cpu"):
    """``encoder(images)`` for ``(S, 3, N, N)`` images, reusing stored slice embeddings.

    Only slices missing from ``store`` go through the encoder (in one batch); the result
    ``(S, C, h, w)`` is on ``device``. Meant for inference (no gradients): a teacher being
    fine-tuned calls its encoder directly.
    """
    import torch

    if store is None:
        return encoder(images.to(device))
    keys = [slice_digest(weights_sha256, image) for image in images]
    found = [store.get(key) for key in keys]
    missing = [s for s, array in enumerate(found) if array is None]
    if missing:
        computed = encoder(images[missing].to(device)).float().cpu().numpy()
        for s, array in zip(missing, computed):
            store.put(keys[s], array)
            found[s] = array
    return torch.from_numpy(np.stack(found)).to(device)


_STORE: tuple[str, EmbeddingStore] | None = None


def default_store() -> EmbeddingStore | None:
    """The process-wide store: memory from ``$DISTILLSEG_EMBEDDING_MEMORY_MB``, disk under
    the teachers' cache folder unless ``$DISTILLSEG_EMBEDDING_CACHE=0``; None when both are off.

    There is one at a time: when those settings change, the previous store is dropped
    (never two bounded stores side by side)."""
    global _STORE
    from .cache import default_cache_dir

    memory_mb = int(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_MB))
    disk = os.environ.get(DISK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    folder = default_cache_dir() / "embeddings" if disk else None
    if memory_mb <= 0 and folder is None:
        return None
    disk_bytes = int(float(os.environ.get(DISK_LIMIT_ENV, DEFAULT_DISK_GB)) * (1 << 30))
    key = f"{folder}|{memory_mb}|{disk_bytes}"
    if _STORE is None or _STORE[0] != key:
        _STORE = None  # the old store's memory goes before the new one fills
        _STORE = (key, EmbeddingStore(folder, max(memory_mb, 0) << 20, disk_bytes))
    return _STORE[1]


def shared_memory_store() -> MemoryOnlyStore | None:
    """The process-wide store's memory part (no disk), or None when it has no memory."""
    store = default_store()
    return store.memory_only() if store is not None and store.memory_bytes > 0 else None
