"""Checkpoints of a user's server: home files and named blobs, content-addressed and signed."""

from .chunks import CHUNK_SIZE, hash_bytes, iter_file_chunks
from .home import checkpoint_home, restore_home, restore_tree, snapshot_tree
from .manifest import (
    FORMAT_VERSION,
    CheckpointError,
    Manifest,
    checkpoint_time,
    new_checkpoint_id,
    sign_manifest,
    verify_manifest,
)
from .signed import SignedCheckpoints
from .store import (
    CheckpointStore,
    LocalCheckpointStore,
    get_blob,
    put_blob,
    store_from_config,
)

__all__ = [
    "CHUNK_SIZE",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointStore",
    "LocalCheckpointStore",
    "Manifest",
    "SignedCheckpoints",
    "checkpoint_home",
    "checkpoint_time",
    "get_blob",
    "hash_bytes",
    "iter_file_chunks",
    "new_checkpoint_id",
    "put_blob",
    "restore_home",
    "restore_tree",
    "sign_manifest",
    "snapshot_tree",
    "store_from_config",
    "verify_manifest",
]
