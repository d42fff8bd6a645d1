"""Checkpoint store throughput: S3CheckpointStore (moto's server) next to LocalCheckpointStore.

A home of N MiB (files of 64 MiB of random bytes, so nothing deduplicates) is snapshotted
into each store the way a host's agent does (`snapshot_tree`: 4 MiB chunks, sha256 each,
written once), snapshotted again unchanged and with one file changed (the incremental
pre-copy), then restored into an empty folder (`restore_tree`: every chunk downloaded and
re-hashed). moto runs as its own process (`moto_server`) on loopback and keeps objects in
memory, so the S3 column is the client's cost (boto3, one request per chunk, one thread)
plus moto's; real S3 adds the network. Writes the section
"## Checkpoint store throughput (local folder vs S3 on moto)" of benchmarks/results.md.

    .venv/bin/python benchmarks/store.py [--size-mb 1024] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import boto3
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import replace_section  # noqa: E402

from migrating_spawner.checkpoint import (  # noqa: E402
    LocalCheckpointStore,
    restore_tree,
    snapshot_tree,
)
from migrating_spawner.checkpoint.s3 import S3CheckpointStore  # noqa: E402

HEADING = "## Checkpoint store throughput (local folder vs S3 on moto)"
FILE_MB = 64
OLD_NS = 1_600_000_000 * 10**9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoProcess:
    """moto's server as a process of its own (no GIL shared with the client)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "moto_server"),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/moto-api/", timeout=1)
                return
            except requests.RequestException:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def make_home(root: Path, size_mb: int) -> list[Path]:
    root.mkdir(parents=True)
    files = []
    left = size_mb
    while left > 0:
        n = min(FILE_MB, left)
        path = root / f"data-{len(files):03d}.bin"
        with open(path, "wb") as f:
            for _ in range(n):
                f.write(os.urandom(1 << 20))
        os.utime(path, ns=(OLD_NS, OLD_NS))  # settled files, as between two checkpoints
        files.append(path)
        left -= n
    return files


def measure(store, home: Path, files: list[Path], work: Path) -> dict[str, float]:
    size = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    table, stats = snapshot_tree(home, store)
    full = time.perf_counter() - t0
    assert stats["bytes_uploaded"] == size, stats
    t0 = time.perf_counter()
    _, stats = snapshot_tree(home, store, table)
    unchanged = time.perf_counter() - t0
    assert stats["bytes_uploaded"] == 0, stats
    with open(files[0], "r+b") as f:  # one 1 MB piece of one file changes
        f.write(os.urandom(1 << 20))
    os.utime(files[0], ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    t0 = time.perf_counter()
    table2, stats = snapshot_tree(home, store, table)
    one = time.perf_counter() - t0
    one_sent = stats["bytes_uploaded"]
    target = work / "restored"
    t0 = time.perf_counter()
    restore_tree(target, table2, store)
    restore = time.perf_counter() - t0
    assert (target / files[-1].name).read_bytes() == files[-1].read_bytes()
    shutil.rmtree(target)
    mb = size / 1e6
    return {
        "mb": mb,
        "full_s": full,
        "full_mbs": mb / full,
        "unchanged_s": unchanged,
        "one_s": one,
        "one_sent_mb": one_sent / 1e6,
        "restore_s": restore,
        "restore_mbs": mb / restore,
    }


def table(rows: dict[str, dict[str, float]], size_mb: int) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        f"`benchmarks/store.py --size-mb {size_mb}`, {stamp}, {platform.machine()},"
        f" {os.cpu_count()} cores (shared with other work), Python {platform.python_version()}.",
        f"A home of {size_mb} MiB in {FILE_MB} MiB files of random bytes; 4 MiB chunks, one"
        " thread, sha256 per chunk on write and again on every read. moto 5.2.5 runs as its"
        " own process on loopback and holds objects in memory: the S3 column is boto3's and"
        " moto's cost, not a network's. MB/s are 10^6 bytes per second. The 1 MB change"
        " rewrites one 4 MiB chunk, which is what is sent.",
        "",
        "| store | full snapshot | MB/s | unchanged re-snapshot | 1 MB changed: time / sent"
        " | restore (download + verify) | MB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['full_s']:.1f} s | {r['full_mbs']:.0f} | {r['unchanged_s']:.3f} s"
            f" | {r['one_s']:.2f} s / {r['one_sent_mb']:.1f} MB | {r['restore_s']:.1f} s"
            f" | {r['restore_mbs']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="64 MB, results.md untouched")
    args = parser.parse_args()
    size_mb = 64 if args.quick else args.size_mb
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    moto = None
    try:
        home = work / "home"
        files = make_home(home, size_mb)
        rows = {}
        local = LocalCheckpointStore(root_dir=str(work / "local-store"))
        rows["local folder (fsync)"] = measure(local, home, files, work)
        shutil.rmtree(work / "local-store")
        shutil.rmtree(home)
        files = make_home(home, size_mb)
        moto = MotoProcess(work / "moto.log")
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        s3 = S3CheckpointStore(bucket=bucket, endpoint_url=moto.url, region="us-east-1")
        rows["S3 (moto server)"] = measure(s3, home, files, work)
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = table(rows, size_mb)
    print(text)
    if not args.quick:
        replace_section(text)


if __name__ == "__main__":
    main()
