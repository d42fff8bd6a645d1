"""Checkpoints in an S3 bucket: chunks as objects named by their hash, manifests beside them.

Layout under `prefix`: ``chunks/<sha256>`` and ``manifests/<server>/<id>.json``. A chunk is
written once (``If-None-Match: *``: a 412 means another writer stored the same bytes first,
which is as good as storing them), big ones as multipart uploads. Every download is re-hashed
with our own sha256: S3 checks what it receives, but nobody else checks what we get back
(moto checks no client checksums at all). Manifests are written last and are signed by the
hub (signed.py), so a bucket others can write cannot make a host restore what the hub did not
checkpoint.

The host agent opens this store from `agent_config()` and talks to S3 itself with the
host's own credentials (an instance role), so home bytes never pass through the hub.
Methods are synchronous, like every store's: the agent calls them from threads.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from traitlets import Float, Integer, Unicode, validate

from .chunks import hash_bytes, is_chunk_hash
from .manifest import CheckpointError, check_checkpoint_id
from .store import CheckpointStore, check_chunk_hash, check_server_key

#: S3's smallest multipart part (all but the last)
MIN_PART_SIZE = 5 * 1024 * 1024

#: codes S3 answers when a conditional write finds the object there already (412), or
#: loses a race with another conditional write of the same key (409: retry)
_EXISTS = {"PreconditionFailed", "412"}
_CONFLICT = {"ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}

# one client per distinct settings, shared by the stores of one process (the agent opens a
# store per request; a boto3 client is thread-safe and costly to build)
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3CheckpointStore(CheckpointStore):
    """Checkpoints in an S3 bucket (or anything that speaks S3: moto, MinIO, ...)."""

    kind = "s3"

    bucket = Unicode(
        "",
        config=True,
        help="""Bucket that holds the checkpoints (it must exist). The hub's role needs
        s3:GetObject/PutObject/DeleteObject/ListBucket on `prefix`, and so does the instance
        role of every host, whose agent reads and writes the chunks itself.""",
    )

    prefix = Unicode(
        "jupyterhub-migrating/",
        config=True,
        help="""Key prefix of every object this store writes (a folder in the bucket);
        several hubs may share a bucket with different prefixes.""",
    )

    endpoint_url = Unicode(
        "",
        config=True,
        help="""S3 endpoint URL; empty: AWS's own for `region`. Set it for moto, MinIO or a
        VPC endpoint.""",
    )

    region = Unicode(
        "",
        config=True,
        help="AWS region of the bucket; empty: boto3's default (AWS_DEFAULT_REGION, ...).",
    )

    multipart_threshold = Integer(
        16 * 1024 * 1024,
        config=True,
        help="""Objects of this many bytes or more are uploaded in parts (multipart upload)
        of `multipart_part_size`. Chunks are CHUNK_SIZE (4 MiB) unless a caller cuts bigger
        ones (put_blob's chunk_size).""",
    )

    multipart_part_size = Integer(
        8 * 1024 * 1024,
        config=True,
        help="Bytes per part of a multipart upload (S3's minimum is 5 MiB).",
    )

    touch_after = Float(
        6 * 3600.0,
        config=True,
        help="""Seconds after which a chunk found already stored is copied onto itself
        (its LastModified renewed) before a new checkpoint relies on it, so the garbage
        collector, which spares chunks younger than its grace period, cannot delete it
        between the check and the manifest. The collector's grace period must be longer
        than this plus the longest checkpoint (gc.py checks it). 0: never.""",
    )

    timeout = Float(
        60.0,
        config=True,
        help="Seconds each S3 request may take to connect, and then to answer.",
    )

    max_attempts = Integer(
        4,
        config=True,
        help="Tries per S3 request (botocore's standard retry mode, with backoff).",
    )

    @validate("multipart_part_size")
    def _valid_part_size(self, proposal: Any) -> int:
        if proposal["value"] < MIN_PART_SIZE:
            raise ValueError(f"multipart_part_size must be >= {MIN_PART_SIZE} (S3's minimum)")
        return proposal["value"]

    @validate("prefix")
    def _valid_prefix(self, proposal: Any) -> str:
        prefix = proposal["value"].lstrip("/")
        return prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._sizes: dict[str, int] = {}  # chunk sizes seen by iter_chunks (for gc reports)

    # -- plumbing ---------------------------------------------------------------------

    @property
    def client(self):
        if not self.bucket:
            raise CheckpointError("S3CheckpointStore.bucket is not set")
        key = (self.endpoint_url, self.region, self.timeout, self.max_attempts)
        with _CLIENTS_LOCK:
            if key not in _CLIENTS:
                _CLIENTS[key] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url or None,
                    region_name=self.region or None,
                    config=Config(
                        connect_timeout=self.timeout,
                        read_timeout=self.timeout,
                        retries={"max_attempts": self.max_attempts, "mode": "standard"},
                        max_pool_connections=32,
                    ),
                )
            return _CLIENTS[key]

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        """One S3 call; errors other than the ones a caller handles become CheckpointError."""
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except ClientError:
            raise
        except BotoCoreError as e:
            raise CheckpointError(f"S3 {what} in bucket {self.bucket}: {e}") from None

    def _fail(self, what: str, e: ClientError) -> CheckpointError:
        return CheckpointError(f"S3 {what} in bucket {self.bucket}: {e}")

    def _chunk_key(self, h: str) -> str:
        return f"{self.prefix}chunks/{check_chunk_hash(h)}"

    def _server_prefix(self, server: str) -> str:
        return f"{self.prefix}manifests/{quote(check_server_key(server), safe='')}/"

    def _manifest_key(self, server: str, checkpoint_id: str) -> str:
        return f"{self._server_prefix(server)}{check_checkpoint_id(checkpoint_id)}.json"

    def _list(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """Every page of a listing under `prefix`."""
        kwargs: dict[str, Any] = {"Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, **kwargs
            )
            yield from pages
        except ClientError as e:
            raise self._fail(f"listing {prefix}", e) from None
        except BotoCoreError as e:
            raise CheckpointError(f"S3 listing {prefix} in bucket {self.bucket}: {e}") from None

    def _put_once(self, key: str, data: bytes) -> bool:
        """Write `key` unless it exists; True if this call wrote it."""
        if len(data) >= self.multipart_threshold:
            return self._put_multipart(key, data)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        for _ in range(self.max_attempts):
            try:
                # ChecksumSHA256: S3 refuses bytes damaged on the way in
                self._call(
                    f"put {key}",
                    "put_object",
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumSHA256=digest,
                )
                return True
            except ClientError as e:
                if _code(e) in _EXISTS or _status(e) == 412:
                    return False
                if not (_code(e) in _CONFLICT or _status(e) == 409):
                    raise self._fail(f"put {key}", e) from None
        raise CheckpointError(f"S3 put {key}: conditional write conflicts on every try")

    def _put_multipart(self, key: str, data: bytes) -> bool:
        upload = self._call(f"multipart {key}", "create_multipart_upload", Key=key)["UploadId"]
        try:
            parts = []
            step = self.multipart_part_size
            for number, start in enumerate(range(0, len(data), step), start=1):
                reply = self._call(
                    f"part {number} of {key}",
                    "upload_part",
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=data[start : start + step],
                )
                parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            self._call(
                f"complete {key}",
                "complete_multipart_upload",
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
            return True
        except ClientError as e:
            self._abort(key, upload)
            if _code(e) in _EXISTS or _status(e) == 412:
                return False
            raise self._fail(f"multipart upload of {key}", e) from None
        except BaseException:
            self._abort(key, upload)
            raise

    def _abort(self, key: str, upload: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
        except (ClientError, BotoCoreError) as e:  # a lifecycle rule cleans up what is left
            self.log.warning("could not abort the multipart upload of %s: %s", key, e)

    def _get(self, what: str, key: str) -> bytes:
        try:
            return self._call(what, "get_object", Key=key)["Body"].read()
        except ClientError as e:
            if _code(e) in _MISSING or _status(e) == 404:
                raise CheckpointError(f"{what} is missing") from None
            raise self._fail(f"get {key}", e) from None
        except (OSError, BotoCoreError) as e:  # the body's stream broke
            raise CheckpointError(f"S3 get {key} in bucket {self.bucket}: {e}") from None

    # -- the store primitives -----------------------------------------------------------

    def has_chunk(self, h: str) -> bool:
        key = self._chunk_key(h)
        try:
            head = self._call(f"head {key}", "head_object", Key=key)
        except ClientError as e:
            if _code(e) in _MISSING or _status(e) == 404:
                return False
            raise self._fail(f"head {key}", e) from None
        stored = head["LastModified"].timestamp()
        if self.touch_after and time.time() - stored > self.touch_after:
            self._touch(key)
        return True

    def _touch(self, key: str) -> None:
        """Renew a chunk's LastModified (a copy onto itself) so the collector spares it."""
        try:
            self._call(
                f"touch {key}",
                "copy_object",
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
            )
        except ClientError as e:
            raise self._fail(f"touch {key}", e) from None

    def put_chunk(self, data: bytes) -> str:
        h = hash_bytes(data)
        self._put_once(self._chunk_key(h), data)
        return h

    def get_chunk(self, h: str) -> bytes:
        data = self._get(f"chunk {h}", self._chunk_key(h))
        if hash_bytes(data) != h:
            raise CheckpointError(f"chunk {h} is corrupt")
        return data

    def chunk_size(self, h: str) -> int:
        if h in self._sizes:
            return self._sizes[h]
        key = self._chunk_key(h)
        try:
            return int(self._call(f"head {key}", "head_object", Key=key)["ContentLength"])
        except ClientError as e:
            if _code(e) in _MISSING or _status(e) == 404:
                raise FileNotFoundError(key) from None
            raise self._fail(f"head {key}", e) from None

    def delete_chunk(self, h: str) -> None:
        key = self._chunk_key(h)
        try:
            self._call(f"delete {key}", "delete_object", Key=key)
        except ClientError as e:
            raise self._fail(f"delete {key}", e) from None

    def iter_chunks(self) -> Iterator[tuple[str, float]]:
        prefix = f"{self.prefix}chunks/"
        for page in self._list(prefix):
            for obj in page.get("Contents", ()):
                h = obj["Key"][len(prefix) :]
                if is_chunk_hash(h):
                    self._sizes[h] = int(obj["Size"])
                    yield h, obj["LastModified"].timestamp()

    def put_manifest(self, server: str, checkpoint_id: str, signed: bytes) -> None:
        # one PUT is atomic in S3: a reader sees the whole manifest or none
        key = self._manifest_key(server, checkpoint_id)
        try:
            self._call(f"put {key}", "put_object", Key=key, Body=signed)
        except ClientError as e:
            raise self._fail(f"put {key}", e) from None

    def get_manifest(self, server: str, checkpoint_id: str) -> bytes:
        return self._get(
            f"checkpoint {checkpoint_id} of {server}", self._manifest_key(server, checkpoint_id)
        )

    def delete_manifest(self, server: str, checkpoint_id: str) -> None:
        key = self._manifest_key(server, checkpoint_id)
        try:
            self._call(f"delete {key}", "delete_object", Key=key)
        except ClientError as e:
            if not (_code(e) in _MISSING or _status(e) == 404):
                raise self._fail(f"delete {key}", e) from None

    def list_checkpoints(self, server: str) -> list[str]:
        prefix = self._server_prefix(server)
        names = [
            obj["Key"][len(prefix) :]
            for page in self._list(prefix, delimiter="/")
            for obj in page.get("Contents", ())
        ]
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))

    def list_servers(self) -> list[str]:
        prefix = f"{self.prefix}manifests/"
        found = [
            p["Prefix"][len(prefix) :].rstrip("/")
            for page in self._list(prefix, delimiter="/")
            for p in page.get("CommonPrefixes", ())
        ]
        return sorted(unquote(name) for name in found if name)

    def agent_config(self) -> dict[str, Any]:
        # no credentials: the host's own (its instance role) reach the bucket
        names = (
            "bucket",
            "prefix",
            "endpoint_url",
            "region",
            "multipart_threshold",
            "multipart_part_size",
            "touch_after",
            "timeout",
            "max_attempts",
        )
        return {"kind": self.kind, "config": {name: getattr(self, name) for name in names}}
