"""Content-addressed chunks: pieces of a file named by the sha256 of their bytes."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

#: the most bytes of one file a chunk holds; a file of N bytes has ceil(N / CHUNK_SIZE) chunks
CHUNK_SIZE = 4 * 1024 * 1024

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def hash_bytes(data: bytes) -> str:
    """The name of a chunk: the sha256 hex digest of its bytes."""
    return hashlib.sha256(data).hexdigest()


def is_chunk_hash(value: object) -> bool:
    """True for a well-formed chunk name (stores use it as a file or object name)."""
    return isinstance(value, str) and _HASH_RE.match(value) is not None


def iter_chunks(fileobj: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Read an open binary file in pieces of `chunk_size` bytes (the last may be shorter)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    while True:
        data = fileobj.read(chunk_size)
        if not data:
            return
        yield data


def iter_file_chunks(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Read the file at `path` in pieces of `chunk_size` bytes."""
    with open(path, "rb") as f:
        yield from iter_chunks(f, chunk_size)


def split_bytes(data: bytes, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """Cut an in-memory blob (kernel state, a session table) into chunks."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
