"""Where a NUTS run's draws go on the host: preallocated ``(chain, draw, ...)`` arrays that
the driver fills chunk by chunk, in memory or as memory-mapped ``.npy`` files.

Arrays are allocated at their final size when the first chunk arrives and each chunk is
copied into its slice, so holding ``n`` draws costs the ``n`` draws and nothing more (no
list of chunks to concatenate at the end). In memory the allocation is lazy (pages are
touched only when written). On disk (``directory=``) every array is a ``.npy`` file,
``<group>.<name>.npy``, readable with ``numpy.load(path, mmap_mode="r")``; after each chunk
the written pages are flushed and dropped from the process's resident set, so a run may
hold more draws than fit in memory.
"""

from __future__ import annotations

import mmap
import pathlib

import numpy as np

__all__ = ["DrawBuffer", "file_map", "release_map"]

GROUPS = ("posterior", "sample_stats", "log_likelihood")


def file_map(array):
    """The ``mmap`` behind ``array`` when it views a shared ``np.memmap`` (directly or
    through ``.base``), else None. Copy-on-write maps (mode ``"c"``) are skipped:
    dropping their pages would discard edits."""
    node = array
    while isinstance(node, np.ndarray):
        mapped = getattr(node, "_mmap", None) if isinstance(node, np.memmap) else None
        if mapped is not None:
            return None if getattr(node, "mode", None) == "c" else mapped
        node = node.base
    return None


def release_map(mapped) -> None:
    """Drop the pages of a file map from the process's resident set (Linux ``madvise``);
    the data stays in the file and the page cache and is re-read when touched."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapped is None or advice is None or not hasattr(mapped, "madvise"):
        return
    try:
        mapped.madvise(advice)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - closed map
        pass


class DrawBuffer:
    """``chains x draws`` slots per array, grouped like ArviZ (``posterior``,
    ``sample_stats``, ``log_likelihood``), filled by :meth:`write` at a draw offset."""

    def __init__(self, chains: int, draws: int, directory=None):
        self.chains, self.draws = int(chains), int(draws)
        self.directory = None if directory is None else pathlib.Path(directory)
        self.arrays: dict[str, dict[str, np.ndarray]] = {g: {} for g in GROUPS}
        self.filled = 0

    def _allocate(self, group: str, name: str, value: np.ndarray) -> np.ndarray:
        shape = (self.chains, self.draws) + tuple(value.shape[2:])
        if self.directory is None:
            return np.empty(shape, value.dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.directory / f"{group}.{name}.npy", mode="w+",
                                         dtype=value.dtype, shape=shape)

    def write(self, groups: dict, offset: int) -> None:
        """Copy ``groups[group][name]`` (``(chain, k, ...)``) into draws ``offset:offset+k``."""
        count = None
        for group, arrays in groups.items():
            for name, value in arrays.items():
                value = np.asarray(value)
                target = self.arrays[group].get(name)
                if target is None:
                    target = self.arrays[group][name] = self._allocate(group, name, value)
                target[:, offset:offset + value.shape[1]] = value
                count = value.shape[1]
                if self.directory is not None:
                    target.flush()
                    release_map(file_map(target))
        if count is not None:
            self.filled = max(self.filled, offset + count)

    def read(self) -> dict:
        """Views of the filled draws, ``group -> name -> (chain, filled, ...)``."""
        return {group: {name: array[:, :self.filled] for name, array in arrays.items()}
                for group, arrays in self.arrays.items()}
