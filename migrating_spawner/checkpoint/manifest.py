"""Manifests: what one checkpoint holds, as canonical JSON signed with HMAC-SHA256.

A manifest names chunks; it never holds file bytes. The signature covers the canonical JSON
of the manifest, so a store that can be written by others (a shared folder, a bucket) cannot
make a host restore files the hub did not checkpoint.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any

from .chunks import is_chunk_hash

#: the manifest format this code writes and reads
FORMAT_VERSION = 1

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CheckpointError(Exception):
    """A checkpoint cannot be written, read, verified or restored."""


def new_checkpoint_id(now: float | None = None) -> str:
    """A time-sortable id, e.g. ``20261122T004312.123456Z-9f2c41d0``.

    Stores list checkpoints in id order, so ids sort by creation time (UTC, microseconds);
    the random tail keeps two hosts that checkpoint in the same microsecond apart.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micros = int(round((now % 1) * 1_000_000)) % 1_000_000
    return f"{stamp}.{micros:06d}Z-{secrets.token_hex(4)}"


_STAMP_RE = re.compile(r"^(\d{8}T\d{6})\.(\d{6})Z-")


def checkpoint_time(checkpoint_id: str) -> float | None:
    """When a checkpoint named by `new_checkpoint_id` was named (its snapshot began after):
    read from the id, so no store is asked. None for an id of another shape."""
    match = _STAMP_RE.match(checkpoint_id or "")
    if match is None:
        return None
    try:
        whole = calendar.timegm(time.strptime(match[1], "%Y%m%dT%H%M%S"))
    except ValueError:
        return None
    return whole + int(match[2]) / 1_000_000


def check_checkpoint_id(checkpoint_id: object) -> str:
    """Return the id if it is safe to use as a file or object name, else raise."""
    if not isinstance(checkpoint_id, str) or not _ID_RE.match(checkpoint_id):
        raise CheckpointError(f"invalid checkpoint id {checkpoint_id!r}")
    return checkpoint_id


def canonical_json(data: Any) -> bytes:
    """The one byte string a JSON value signs as: sorted keys, no spaces, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclasses.dataclass(kw_only=True)
class Manifest:
    """One checkpoint of one server: its home file table and named blobs."""

    server: str
    id: str = dataclasses.field(default_factory=new_checkpoint_id)
    created: float = dataclasses.field(default_factory=time.time)
    parent: str | None = None
    #: relative posix path -> {"type": "file"|"dir"|"symlink", ...} (see home.py)
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: name -> chunk hashes, for state that is not a file (kernel namespaces, sessions, ...)
    blobs: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build a manifest from parsed JSON, checking every field's type."""
        if not isinstance(data, dict):
            raise CheckpointError("checkpoint manifest is not a JSON object")
        ident = data.get("id", "<unknown>")
        fmt = data.get("format")
        if type(fmt) is not int or fmt != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {ident} has unknown format version {fmt!r};"
                f" this version reads format {FORMAT_VERSION}"
            )
        expected: dict[str, type | tuple[type, ...]] = {
            "id": str,
            "server": str,
            "created": (int, float),
            "parent": (str, type(None)),
            "files": dict,
            "blobs": dict,
            "meta": dict,
        }
        missing = sorted(set(expected) - set(data))
        if missing:
            raise CheckpointError(f"checkpoint {ident} is missing fields: {', '.join(missing)}")
        for name, types in expected.items():
            if not isinstance(data[name], types) or isinstance(data[name], bool):
                raise CheckpointError(f"checkpoint {ident} has a malformed field {name!r}")
        check_checkpoint_id(data["id"])
        for name, hashes in data["blobs"].items():
            if not isinstance(hashes, list) or not all(is_chunk_hash(h) for h in hashes):
                raise CheckpointError(f"checkpoint {ident} has a malformed blob {name!r}")
        for path, entry in data["files"].items():
            if not isinstance(entry, dict):
                raise CheckpointError(f"checkpoint {ident} has a malformed entry for {path!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def chunk_hashes(self) -> set[str]:
        """Every chunk this checkpoint needs: file contents and blobs."""
        hashes = {h for entry in self.files.values() for h in entry.get("chunks", ())}
        hashes.update(h for chunk_list in self.blobs.values() for h in chunk_list)
        return hashes


def _mac(manifest_json: bytes, secret: bytes) -> str:
    if isinstance(secret, str):
        secret = secret.encode()
    if not secret:
        # an empty key would still "verify", which hides a configuration mistake
        raise CheckpointError("checkpoint signing secret is empty")
    return hmac.new(secret, manifest_json, hashlib.sha256).hexdigest()


def sign_manifest(manifest: Manifest, secret: bytes) -> bytes:
    """The stored form of a manifest: ``{"manifest": {...}, "signature": "<hex>"}``."""
    body = manifest.to_dict()
    signature = _mac(canonical_json(body), secret)
    return canonical_json({"manifest": body, "signature": signature})


def verify_manifest(
    data: bytes,
    secret: bytes,
    *,
    server: str | None = None,
    checkpoint_id: str | None = None,
) -> Manifest:
    """Check a stored manifest's signature and shape and return it.

    `server` and `checkpoint_id`, when given, must match what was signed: a validly
    signed manifest of one user must not restore into another user's server.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifest"), dict):
        raise CheckpointError("checkpoint manifest is missing its 'manifest' object")
    body = doc["manifest"]
    ident = body.get("id", "<unknown>")
    signature = doc.get("signature")
    if not isinstance(signature, str):
        raise CheckpointError(f"checkpoint {ident} is missing its signature; refusing to restore")
    if body.get("format") != FORMAT_VERSION:
        # before the signature check: a newer format may sign differently
        Manifest.from_dict(body)
    try:
        expected = _mac(canonical_json(body), secret)
    except ValueError as e:  # NaN or infinity in the body: never produced by sign_manifest
        raise CheckpointError(f"checkpoint {ident} is not canonical JSON: {e}") from None
    if not hmac.compare_digest(expected, signature):
        raise CheckpointError(
            f"checkpoint {ident} failed verification: signature mismatch; refusing to restore"
        )
    manifest = Manifest.from_dict(body)
    if server is not None and manifest.server != server:
        raise CheckpointError(
            f"checkpoint {ident} belongs to server {manifest.server!r}, not {server!r};"
            " refusing to restore"
        )
    if checkpoint_id is not None and manifest.id != checkpoint_id:
        raise CheckpointError(
            f"checkpoint stored as {checkpoint_id} carries id {manifest.id}; refusing to restore"
        )
    return manifest
