"""The garbage collector of a checkpoint store: chunks no manifest references go.

A chunk is deleted only when no stored manifest names it AND it was stored more than
`grace_period` seconds ago: a checkpoint in progress has stored its chunks but not yet its
manifest (manifests go last). A chunk an S3 store finds already there is renewed before a
checkpoint relies on it when older than the store's `touch_after`, so the grace period must
be longer than that plus the longest checkpoint; `check()` refuses a shorter one.

Run by the hub (it holds the secret that verifies manifests): the controller starts
`run_forever(controller.checkpoints)`, which collects every `interval` seconds when that is
set (`c.GarbageCollector.interval`); once: `GarbageCollector(...).collect(checkpoints)`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from traitlets import Float
from traitlets.config import LoggingConfigurable

from .manifest import CheckpointError
from .signed import SignedCheckpoints


class GarbageCollector(LoggingConfigurable):
    """Deletes unreferenced chunks older than a grace period, now or on a timer."""

    grace_period = Float(
        24 * 3600.0,
        config=True,
        help="""Seconds a chunk no manifest references is kept after it was stored (or
        renewed). Longer than the longest checkpoint, and than an S3 store's `touch_after`
        plus that.""",
    )

    interval = Float(
        0.0,
        config=True,
        help="""Seconds between collections while the hub runs (0, the default: never; e.g.
        21600 for every 6 h). With S3CheckpointStore a chunk reused by a checkpoint is
        renewed first (`touch_after`); LocalCheckpointStore does not renew, so there a
        chunk unreferenced for longer than `grace_period` and reused during a collection
        could go: keep the grace period long.""",
    )

    def check(self, store: Any) -> None:
        """Refuse a grace period the store's own renewal could outlive."""
        touch_after = getattr(store, "touch_after", 0) or 0
        if touch_after and self.grace_period <= touch_after:
            raise CheckpointError(
                f"GarbageCollector.grace_period ({self.grace_period:g} s) must be longer than"
                f" the store's touch_after ({touch_after:g} s) plus the longest checkpoint"
            )

    def collect(self, checkpoints: SignedCheckpoints) -> dict[str, Any]:
        """One collection: returns {"deleted", "kept", "bytes_freed", "unverified", "seconds"}.

        A manifest that fails verification still protects its chunks; one that cannot be
        parsed stops the collection (CheckpointError): deleting cannot be undone.
        """
        self.check(checkpoints.store)
        t0 = time.monotonic()
        report = checkpoints.store.collect_garbage(checkpoints.secret, min_age=self.grace_period)
        report["seconds"] = round(time.monotonic() - t0, 3)
        self.log.info(
            "checkpoint gc: %d chunks deleted (%d bytes), %d kept, %d unverified manifests",
            report["deleted"],
            report["bytes_freed"],
            report["kept"],
            len(report["unverified"]),
        )
        return report

    async def run_forever(self, checkpoints: SignedCheckpoints) -> None:
        """Collect every `interval` seconds (in a thread: store calls block) until cancelled."""
        if self.interval <= 0:
            return
        try:
            self.check(checkpoints.store)
        except CheckpointError as e:  # a setting to fix: say so once, never delete
            self.log.error("checkpoint gc is off: %s", e)
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.collect, checkpoints)
            except CheckpointError as e:
                self.log.error("checkpoint gc skipped: %s", e)
