"""Content-addressed blobs and the index of a kernel state folder.

Layout: `blobs/<blake2b>.bin` (one per variable or group of variables sharing objects) and
`index.json`, written last through a temporary file and a rename so a reader sees either the
old snapshot or the new one. A blob that already exists is not written again. What makes a
snapshot incremental is the mutation rule (python.py: a variable no cell touched since the
last snapshot keeps its blob without being pickled again); content addresses only spare
rewriting small variables a full walk finds unchanged. Blobs of `BIG` bytes and more are
named at random and not hashed: hashing 1 GB cost more than writing it (1.18x
`dill.dump_module` at 1 GB, benchmarks/results.md).

A blob holds a pickle plus its out-of-band buffers (pickle protocol 5): large numpy arrays
go from memory to disk without an intermediate copy.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import struct
import time
from concurrent.futures import ThreadPoolExecutor

MAGIC = b"KPS1"
# Hashing is what an unchanged variable still costs. blake2b is ~2x sha256 on CPUs without
# SHA extensions; big buffers are hashed in chunks on all cores (hashlib releases the GIL).
_CHUNK = 32 << 20
#: blobs this large are not content-addressed (a random name, no hash)
BIG = 64 << 20
#: buffers this large are read into anonymous memory (no zero-fill before the read)
_MAPPED = 1 << 20
#: private anonymous memory, its pages faulted in one pass before the read (Linux): reading
#: 1 GB took 0.42-0.57 s so, 0.86-1.64 s into mmap's default (shared, faulted page by page)
_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
#: a blob is complete when renamed into place and never written again, so its mtime is set
#: this far back: the home checkpoint re-reads a file modified in its last 2 s, which may
#: still be changing (checkpoint/home.py RACY_WINDOW_NS); a blob cannot, and re-reading a
#: fresh 90 MB one made a move's final checkpoint 84 ms instead of 14 (benchmarks/results.md)
_SETTLED_NS = 60 * 10**9


def _h(data=b"") -> hashlib.blake2b:
    return hashlib.blake2b(data, digest_size=32)


def _digest(parts: list) -> str:
    h = _h()
    for part in parts:
        n = memoryview(part).nbytes
        if n < 2 * _CHUNK:
            h.update(part)
            continue
        view = memoryview(part).cast("B")
        chunks = [view[i : i + _CHUNK] for i in range(0, n, _CHUNK)]
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            for d in pool.map(lambda c: _h(c).digest(), chunks):
                h.update(d)
    return h.hexdigest()


def blob_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "blobs")


def put(state_dir: str, main: bytes, buffers: list[memoryview]) -> tuple[str, int, int]:
    """Store one blob; returns (hash, size, bytes written: 0 when it already existed)."""
    header = MAGIC + struct.pack("<IQ", len(buffers), len(main))
    header += b"".join(struct.pack("<Q", b.nbytes) for b in buffers)
    size = len(header) + len(main) + sum(b.nbytes for b in buffers)
    digest = "r" + secrets.token_hex(16) if size >= BIG else _digest([header, main, *buffers])
    path = os.path.join(blob_dir(state_dir), digest + ".bin")
    if os.path.exists(path):
        return digest, size, 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(main)
        for b in buffers:
            f.write(b)
    now = time.time_ns()
    os.utime(tmp, ns=(now, now - _SETTLED_NS))
    os.replace(tmp, path)
    return digest, size, size


def get(state_dir: str, digest: str) -> tuple[bytes, list]:
    with open(os.path.join(blob_dir(state_dir), digest + ".bin"), "rb", buffering=0) as f:
        if f.read(4) != MAGIC:
            raise ValueError(f"blob {digest} is not a kernel state blob")
        nbuf, main_len = struct.unpack("<IQ", f.read(12))
        lens = struct.unpack(f"<{nbuf}Q", f.read(8 * nbuf)) if nbuf else ()
        main = _read(f, main_len, digest)
        # writable, so numpy arrays come back writable
        buffers = [_read(f, n, digest) for n in lens]
    return main, buffers


def _read(f, n: int, digest: str):
    """`n` bytes of `f`; a big read into fresh anonymous memory, which (unlike bytearray)
    is not zero-filled first only to be overwritten."""
    buf = mmap.mmap(-1, n, flags=_ANON) if n >= _MAPPED else bytearray(n)
    view, done = memoryview(buf), 0
    while done < n:  # one read(2) returns at most 2 GB
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"blob {digest} is cut short")
        done += got
    view.release()
    return buf


def write_json(path: str, data: dict) -> int:
    raw = json.dumps(data, indent=1, default=str).encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)
    return len(raw)


def read_index(state_dir: str) -> dict | None:
    """The folder's index; None if it has none. ValueError if it is damaged (a snapshot
    then starts afresh; a restore says so)."""
    path = os.path.join(state_dir, "index.json")
    try:
        with open(path) as f:
            index = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"the snapshot index {path} is damaged ({e})") from None
    if not isinstance(index, dict):
        raise ValueError(f"the snapshot index {path} is damaged (not an object)")
    return index


def prune(state_dir: str, keep: set[str]) -> None:
    """Remove blobs the current index no longer names (after it has been written)."""
    d = blob_dir(state_dir)
    for name in os.listdir(d):
        if name.endswith(".bin") and name[:-4] not in keep:
            os.unlink(os.path.join(d, name))
