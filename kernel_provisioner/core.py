"""MovableKernel: one kernel that lives behind a stable relay and moves between hosts.

Provider-agnostic: it needs a HostProvider (hosts with agents), a folder both the old and the
new host reach (``state_dir``, for the namespace snapshot) and a kernel command. Adapters
(the jupyter_client provisioner, an Enterprise Gateway process proxy) own one each and map
their lifecycle calls onto ``start``/``move``/``stop_kernel``/``shutdown``.

Clients only ever see ``relay.connection_info``. The kernel behind it (the "target") runs on a
host under the host's agent with ports and an HMAC key of its own, written into a connection
file through the agent. It moves on the same engine as a user server (``moving.py``: the
process's ``MoveScheduler`` takes the host watcher's notices and runs a ``Move``): start the
new kernel while the old one serves, pause the relay, snapshot the old kernel, restore into
the new one, re-point the relay, release the old host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient

from migrating_spawner import kernelstate as state
from migrating_spawner.agent.client import AgentError
from migrating_spawner.hosts.base import Host, HostProvider
from migrating_spawner.kernelstate.transfer import KernelStateTransfer

from .moving import MOVE_RETRY_SECONDS, KernelMover, KernelServer, mover_for
from .relay import KernelRelay

#: how often a move tries to snapshot a kernel, while its host's deadline allows
MOVE_SNAPSHOT_ATTEMPTS = 5
#: version stamp of ``MovableKernel.to_info()``: old records load after an upgrade
INFO_VERSION = 1
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
SNAPSHOT_REPORT = "snapshot-report.json"
RESTORE_REPORT = "restore-report.json"
#: a report's key for the store's checkpoint of that snapshot (kernels with a transfer)
CHECKPOINT_KEY = "checkpoint"


class KernelMoveError(Exception):
    """A kernel could not be started, moved or reached on its host."""


# -- pure parts ------------------------------------------------------------------------------


def build_connection_info(
    ip: str, ports: list[int], key: str, signature_scheme: str = "hmac-sha256"
) -> dict[str, Any]:
    """The connection info of a target kernel: 5 distinct ports on its host's address."""
    if len(ports) != len(PORT_NAMES) or len(set(ports)) != len(ports):
        raise ValueError(f"need {len(PORT_NAMES)} distinct ports, got {ports}")
    return {
        "transport": "tcp",
        "ip": ip,
        **dict(zip(PORT_NAMES, (int(p) for p in ports), strict=True)),
        "key": key,
        "signature_scheme": signature_scheme,
    }


def connection_file_text(info: dict[str, Any], kernel_name: str = "") -> str:
    """The connection file a kernel reads (``-f``): the standard Jupyter format."""
    data = {k: info[k] for k in ("transport", "ip", *PORT_NAMES, "key", "signature_scheme")}
    if kernel_name:
        data["kernel_name"] = kernel_name
    return json.dumps(data, indent=1)


def kernel_argv(argv: list[str], connection_file: str) -> list[str]:
    """The kernelspec's argv with ``{connection_file}`` filled in; it must be there, since a
    kernel started without one would pick ports of its own that nobody knows."""
    if not any("{connection_file}" in arg for arg in argv):
        raise KernelMoveError(f"kernel argv has no {{connection_file}}: {argv}")
    return [arg.replace("{connection_file}", connection_file) for arg in argv]


def process_name(kernel_id: str) -> str:
    return f"kernel-{kernel_id}"


def kernel_owner(configured: str, env: dict[str, str], process_env: dict[str, str]) -> str:
    """The hub user a kernel runs as on hosts whose agents run processes as users (EC2):
    the configured one, else the kernel's ``KERNEL_USERNAME`` (gateway clients send it),
    else this process's ``JUPYTERHUB_USER`` (a kernel of the user's own server); "" if
    none (such an agent then refuses the kernel: it never runs one as root)."""
    return configured or env.get("KERNEL_USERNAME") or process_env.get("JUPYTERHUB_USER") or ""


def snapshot_failure(reply: dict | None, report: dict[str, Any] | None) -> str:
    """What went wrong with a snapshot request, from its execute_reply and the report the
    snapshot code wrote; "" if nothing did."""
    if reply is None:
        return "the kernel did not answer the snapshot request"
    content = reply.get("content") or {}
    status = content.get("status")
    if status == "aborted":
        return "the kernel aborted the snapshot request, queued behind the interrupted cell"
    if status == "error":
        return f"the snapshot code raised {content.get('ename')}: {content.get('evalue')}"
    if report is None:
        return "the snapshot code wrote no report"
    if not report.get("ok"):
        return f"the snapshot failed: {report.get('error') or 'no reason given'}"
    return ""


def drop_report_code(language: str, path: str) -> str:
    """Code that removes a kernel's last snapshot report before a new snapshot writes its
    own (no name is left in the user's namespace): a snapshot that writes none is then
    not taken for the one before. For kernels whose state folder only their host reaches."""
    quoted = json.dumps(path)
    if state.supported(language) and language.lower() == "r":
        return f"invisible(if (file.exists({quoted})) file.remove({quoted}))\n"
    return f"__import__('os').path.exists({quoted}) and __import__('os').unlink({quoted})\n"


def interrupted_text(loss: str) -> str:
    """What the cell a move interrupted says: why it stopped, and what did not move."""
    if not loss:
        return state.INTERRUPTED
    return f"interrupted because this kernel's host was reclaimed. {loss}"


@dataclasses.dataclass
class KernelTimings:
    """How a MovableKernel paces itself (KernelHostSettings has a trait of each name)."""

    #: seconds between looks at its host's state (the host watcher's interval) and at
    #: whether a background snapshot is due
    notice_poll_interval: float = 1.0
    #: how long a new kernel may take to answer kernel_info
    start_timeout: float = 60.0
    #: how long a running cell may go on once a move begins, before it is interrupted
    cell_timeout: float = 30.0
    #: seconds between snapshots of an idle kernel that ran something since the last one,
    #: which a host lost without notice comes back from (0: snapshots on notice only)
    snapshot_interval: float = 30.0


class MovableKernel:
    """A kernel with a stable endpoint (the relay) that moves when its host is reclaimed."""

    def __init__(
        self,
        provider: HostProvider,
        kernel_id: str,
        language: str,
        state_dir: str,
        *,
        relay_ip: str = "127.0.0.1",
        relay_ports: dict[str, int] | None = None,
        relay_key: bytes | str | None = None,
        kernel_name: str = "",
        work_dir: str = "",
        user: str = "",
        transfer: KernelStateTransfer | None = None,
        timings: KernelTimings | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.provider = provider
        self.kernel_id = kernel_id
        self.language = language
        self.state_dir = state_dir
        self.kernel_name = kernel_name
        # where the kernel starts when its caller names no cwd: on storage every host sees,
        # so files written by relative path move with it (empty: the host's own disk)
        self.work_dir = work_dir
        # the hub user it runs as where agents run processes as users ("": from the env at
        # each start, see kernel_owner)
        self.configured_user = user
        self.user = user
        # snapshots through the checkpoint store (None: `state_dir` is a folder every host
        # reaches): each host keeps the kernel's folder on its own disk (state_dir_on)
        self.transfer = transfer
        self._launched: dict[tuple[str, int], Host] = {}  # target (ip, shell port) -> host
        self.timings = timings or KernelTimings()
        self.log = log or logging.getLogger(__name__)
        self.relay = KernelRelay(ip=relay_ip, key=relay_key, ports=relay_ports, log=self.log)
        self.host: Host | None = None
        self.target: dict[str, Any] | None = None
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.cwd = ""
        self.stopping = False
        self.moves: list[dict[str, Any]] = []  # one record per move, for logs and benchmarks
        self._relay_started = False
        self._last_snapshot = time.monotonic()
        self._snapshot_executes = 0  # relay.executes at the last good snapshot
        # the last good snapshot's report and when it was taken (epoch), in state_dir
        self.good_snapshot: tuple[dict[str, Any], float] | None = None
        self._background: set[asyncio.Task] = set()
        # moves: this kernel as the move engine sees it, and the engine of this process
        self.server = KernelServer(self)
        self._mover: KernelMover | None = None

    @property
    def process(self) -> str:
        return process_name(self.kernel_id)

    @property
    def snapshot_report(self) -> Path:
        return Path(self.state_dir) / SNAPSHOT_REPORT

    def state_dir_on(self, host: Host | None) -> str:
        """Where the kernel on `host` writes and reads its snapshots: `state_dir`, or with
        a transfer a folder on that host's own disk."""
        if self.transfer is None or host is None:
            return self.state_dir
        return os.path.join(host.disk, "kernel-state", self.kernel_id)

    def _host_of(self, target: dict[str, Any]) -> Host | None:
        return self._launched.get((target.get("ip", ""), target.get("shell_port", 0)), self.host)

    # -- lifecycle -------------------------------------------------------------------------

    async def start_relay(self) -> dict[str, Any]:
        """Bind the relay (idempotent); returns the connection info clients use."""
        if not self._relay_started:
            await self.relay.start()
            self._relay_started = True
        return self.relay.connection_info

    async def start(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: str = ""
    ) -> dict[str, Any]:
        """Start the kernel (on the current host on a restart, else on a new one) and point
        the relay at it. Returns the relay's connection info."""
        if not cwd and self.work_dir:
            os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
            cwd = self.work_dir
        self.argv, self.env, self.cwd = list(argv), dict(env or {}), cwd
        self.user = kernel_owner(self.configured_user, self.env, dict(os.environ))
        self.stopping = False
        # a fresh namespace (a restart too): an older snapshot is not this kernel's state
        self.good_snapshot = None
        self.snapshot_report.unlink(missing_ok=True)
        await self.start_relay()
        fresh_host = self.host is None
        if not fresh_host and self.transfer is not None:
            # a restart: the store's snapshots are of the namespace before it, which a
            # process taking this kernel over must not restore
            try:
                await self.transfer.forget(self.kernel_id)
            except Exception as e:
                self.log.warning(
                    "kernel %s: old snapshots left in the store: %s", self.kernel_id, e
                )
        if fresh_host:
            self.host = await self.provider.take(owner=self.kernel_id)
        try:
            self.target = await self.launch_on(self.host)
        except BaseException:
            if fresh_host:
                host, self.host = self.host, None
                await self._release(host)
            raise
        await self._retarget(self.target)
        self._join_mover()
        return self.relay.connection_info

    async def reattach(self, host_id: str, target: dict[str, Any]) -> None:
        """Take over a running kernel after the owning process restarted (same relay ports
        and key, from ``to_info()``)."""
        self.host = await self.provider.get(host_id)
        if self.host is None:
            raise KernelMoveError(f"host {host_id} of kernel {self.kernel_id} is gone")
        self.target = dict(target)
        await self.start_relay()
        await self._retarget(self.target)
        if self.transfer is not None:
            # the last good snapshot was known to the process before this one only: the
            # store has it (a host lost without notice, or a failed move snapshot, comes
            # back from it; without a transfer it is state_dir's report)
            self.good_snapshot = await self._stored_snapshot()
        self._join_mover()

    async def _stored_snapshot(self) -> tuple[dict[str, Any], float] | None:
        """The kernel's latest snapshot in the store: its report naming its checkpoint, and
        when it was committed (epoch); None if there is none or it cannot be read."""
        assert self.transfer is not None
        try:
            found = await self.transfer.latest_snapshot(self.kernel_id, SNAPSHOT_REPORT)
        except Exception as e:  # an unreachable store, a tampered manifest
            self.log.warning("kernel %s: its last snapshot in the store: %s", self.kernel_id, e)
            return None
        if found is None:
            self.log.info("kernel %s: no snapshot in the store", self.kernel_id)
            return None
        manifest, report = found
        self.log.info("kernel %s: last snapshot in the store: %s", self.kernel_id, manifest.id)
        return {**report, CHECKPOINT_KEY: manifest.id}, manifest.created

    def _join_mover(self) -> None:
        """Moves from now on: the process's scheduler takes this kernel's notices, and its
        background snapshots run."""
        if self._mover is None:
            self._mover = mover_for(self.provider, self.log)
        self._mover.scheduler.register(self.server)
        self.server.start_precopy()

    async def stop_kernel(self, grace: float = 5.0) -> None:
        """Stop the kernel process; the host and the relay stay (a restart follows)."""
        if self.host is None:
            return
        try:
            await self.provider.agent(self.host).stop_process(self.process, grace=grace)
        except AgentError as e:
            self.log.warning("kernel %s: could not stop its process: %s", self.kernel_id, e)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop the kernel, release its host, close the relay, drop its snapshot."""
        self.stopping = True
        if self._mover is not None:
            # a move under way aborts (its new host goes back) before this host goes
            await self._mover.scheduler.cancel(self.kernel_id)
            self._mover.scheduler.forget(self.kernel_id)
        self.server.stop_precopy()
        await self.stop_kernel(grace)
        host, self.host = self.host, None
        if host is not None:
            await self._release(host)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._relay_started:
            await self.relay.stop()
            self._relay_started = False
        _rmtree(self.state_dir)
        if self.transfer is not None:
            try:
                await self.transfer.forget(self.kernel_id)
            except Exception as e:  # its snapshots stay for the garbage collector
                self.log.warning("kernel %s: snapshots left in the store: %s", self.kernel_id, e)
        if self.work_dir:
            # the user's files stay; an empty folder does not
            with contextlib.suppress(OSError):
                os.rmdir(self.work_dir)

    async def status(self) -> dict[str, Any] | None:
        """The agent's record of the kernel process; None if the agent is unreachable.

        Read from the provider's host watcher, polled again only when its answer is older
        than half a poll interval (the gateways ask often; the agent is asked once)."""
        if self.host is None:
            return {"running": False, "exit_code": 0}
        state = await self.provider.watcher.refresh(
            self.host, self.timings.notice_poll_interval / 2
        )
        if state.failures or state.lost or state.status is None:
            return None
        return state.process(self.process) or {"running": False, "exit_code": -1}

    async def is_alive(self) -> bool:
        """True while the kernel runs or moves (clients must not see it die meanwhile)."""
        if self.moving:
            return True
        proc = await self.status()
        # an unreachable agent is the mover's business: a host the watcher calls lost moves
        return proc is None or bool(proc.get("running"))

    async def interrupt(self) -> None:
        """Interrupt the running cell: an interrupt_request on the target's control channel
        (works whatever the kernelspec's interrupt_mode, and across hosts). Sent through
        the relay, so it never waits on a new connection, and it stays ahead of the
        shutdown_request that follows it at a restart or shutdown (jupyter_client
        interrupts first); a reply is not awaited, as none is for a SIGINT."""
        if not await self.relay.interrupt_kernel():
            self.log.info("kernel %s: no kernel to interrupt", self.kernel_id)

    def interrupt_soon(self) -> None:
        """``interrupt()`` from synchronous code (the task is kept, and awaited at
        shutdown)."""
        self._keep(self.interrupt())

    # -- the steps of a move (KernelServer maps the move engine onto them) ------------------

    @property
    def moving(self) -> bool:
        """Whether a move of this kernel is queued or running (the scheduler's answer)."""
        return self._mover is not None and self._mover.scheduler.is_moving(self.kernel_id)

    async def freeze_for_move(self, deadline: float) -> tuple[dict[str, Any] | None, str]:
        """Snapshot the kernel for a move (the relay is paused): (its report, "") or (None,
        what the user is told instead). ``deadline`` (epoch seconds, when the host goes)
        bounds how long a running cell may go on and how long a failed snapshot is retried.
        A cell the move interrupted says in its own output why it stopped."""
        assert self.target is not None
        previous = self.good_snapshot  # what a failed snapshot falls back to
        snap: dict[str, Any] | None = None
        notice = ""
        try:
            snap, why = await self._move_snapshot(self.target, deadline)
            if snap is None:
                notice = self._loss_notice(why, previous)
        finally:
            # a move cancelled by a shutdown lets the cell end without a word
            done = snap is not None or bool(notice)
            await self.relay.explain_interrupted(interrupted_text(notice) if done else "")
        return snap, notice

    async def restore_after_move(
        self, target: dict[str, Any], snap: dict[str, Any] | None, notice: str
    ) -> dict[str, Any] | None:
        """Bring the namespace ``freeze_for_move`` saved into the kernel at ``target``; without
        a snapshot, the last good one, said as such (what ran after it is lost)."""
        if snap is not None:
            self.good_snapshot = (snap, time.time())
            return await self._restore(target, snap)
        self.relay.announce(notice)
        if self.good_snapshot is None:
            return None
        return await self._restore(target, self.good_snapshot[0])

    async def precopy_snapshot(self, timeout: float) -> dict[str, Any] | None:
        """A move's pre-copy: a snapshot taken while the kernel keeps serving (a busy kernel
        is not pre-copied; a cell sent meanwhile is waited for up to ``timeout``, never
        interrupted); its report, or None. It
        is the last good snapshot from now on, as a background one is. None for a kernel
        whose language takes no delta (R): it is snapshotted and restored whole in the
        freeze, once."""
        assert self.target is not None
        if not state.precopies(self.language):
            return None
        if self.relay.execution_state == "busy":
            # never wait on the user's cell here: the new kernel starts at once, and the
            # freeze snapshots this one (interrupting the cell if the deadline needs it)
            return None
        executes = self.relay.executes
        report = await self._snapshot(self.target, timeout)
        if report is not None:
            self._snapshot_executes = executes
            self.good_snapshot = (report, time.time())
        return report

    async def restore_ahead(
        self, target: dict[str, Any], snap: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Restore a move's pre-copy into the kernel launched at ``target`` before the
        switch; what goes wrong is not the user's to hear (the final restore is then whole
        and says what it loses)."""
        return await self._restore(target, snap, quiet=True)

    async def restore_after_loss(self, target: dict[str, Any]) -> dict[str, Any] | None:
        """The old host went away without a final snapshot: what the dead kernel was
        running or had queued runs on the one at ``target``, from the last snapshot if there
        is one (variables defined after it are lost)."""
        requeued = self.relay.requeue_unanswered()
        if requeued:
            self.log.warning("kernel %s: %d request(s) sent again", self.kernel_id, requeued)
        snap = _read_json(self.snapshot_report)
        taken_at = 0.0
        if self.good_snapshot is not None:  # a failed snapshot since may have overwritten it
            snap, taken_at = self.good_snapshot
        elif snap is not None and snap.get("ok"):
            taken_at = self.snapshot_report.stat().st_mtime
        if snap is not None and snap.get("ok"):
            taken = time.strftime("%H:%M:%S", time.localtime(taken_at))
            self.relay.announce(
                "This kernel's machine went away without notice. The kernel was restarted "
                f"on another machine from its last snapshot (taken at {taken}, after cell "
                f"[{snap.get('execution_count', '?')}]): what you ran after that is lost."
            )
        if snap is None:
            self.log.error(
                "kernel %s: host lost and no snapshot: it starts fresh; its variables are lost",
                self.kernel_id,
            )
        return await self._restore(target, snap)

    async def process_running(self, host: Host | None) -> bool:
        """Whether this kernel's process runs on ``host`` (one quick probe; never raises)."""
        if host is None:
            return False
        try:
            proc = await self.provider.agent(host).process(self.process, quick=True)
        except Exception:  # an agent that does not answer: its host is going or gone
            return False
        return bool(proc and proc.get("running"))

    async def stop_on(self, host: Host) -> None:
        """Kill this kernel's process on ``host`` at once (never raises)."""
        try:
            await self.provider.agent(host).stop_process(self.process, grace=0, quick=True)
        except Exception as e:  # a host that is gone already is fine
            self.log.info("kernel %s: no process to stop on %s: %s", self.kernel_id, host.id, e)

    async def reopen_relay(self) -> None:
        """End a gap: queued requests go to the kernel at ``self.target`` (the relay
        reconnects only if that is not where it points already)."""
        if self.target is None:
            return
        if self.relay.target == self.target:
            await self._flushed(self.relay.resume())
        else:
            await self._retarget(self.target)

    def release_soon(self, host: Host) -> None:
        """Give ``host`` back in a task of its own (awaited at shutdown)."""
        self._keep(self._release(host))

    async def snapshot_loop(self) -> None:
        """Snapshot the kernel whenever it is idle and has run something since the last
        snapshot, every ``snapshot_interval``: what a host lost without notice comes back
        from. Runs until cancelled (a move stops it and starts it again)."""
        while not self.stopping:
            await asyncio.sleep(self.timings.notice_poll_interval)
            if self._snapshot_due():
                await self._background_snapshot()

    def _snapshot_code(self, host: Host | None) -> str:
        if self.transfer is None:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            return state.snapshot_code(self.language, self.state_dir)
        where = self.state_dir_on(host)
        return drop_report_code(
            self.language, os.path.join(where, SNAPSHOT_REPORT)
        ) + state.snapshot_code(self.language, where)

    async def _snapshot_result(self, host: Host | None) -> dict[str, Any] | None:
        """The report of the snapshot just taken. With a transfer the kernel's folder is
        uploaded from its host into the store and committed only if that report is good
        (the report then names its checkpoint)."""
        if self.transfer is None or host is None:
            return _read_json(self.snapshot_report)
        try:
            manifest, report = await self.transfer.save_snapshot(
                self.provider.agent(host),
                self.kernel_id,
                self.state_dir_on(host),
                SNAPSHOT_REPORT,
            )
        except Exception as e:  # the store or the agent: this snapshot is not kept
            return {"ok": False, "error": f"the snapshot could not be stored: {e}"}
        if manifest is not None and report is not None:
            report = {**report, CHECKPOINT_KEY: manifest.id}
        return report

    async def _snapshot(self, target: dict[str, Any], bound: float) -> dict[str, Any] | None:
        """A background snapshot (no move under way) into ``state_dir``: the last snapshot
        stays until a new one is complete, and a cell the user started meanwhile is never
        interrupted. Its report if it is good, else None."""
        if not state.supported(self.language):
            return None
        client = self._client(target)
        try:
            reply = await self._run_hidden(client, self._snapshot_code(self.host), bound)
        finally:
            client.stop_channels()
        report = await self._snapshot_result(self.host)
        why = snapshot_failure(reply, report)
        if why:
            self.log.warning("kernel %s: background snapshot failed: %s", self.kernel_id, why)
            return None
        return report

    async def _move_snapshot(
        self, target: dict[str, Any], deadline: float | None
    ) -> tuple[dict[str, Any] | None, str]:
        """Snapshot the kernel for a move: (its report, "") or (None, what failed).

        A running cell may go on for ``cell_timeout`` (never beyond the deadline minus 5 s),
        then it is interrupted. ipykernel aborts the requests queued behind an interrupted
        cell, so a snapshot that fails is sent again once the kernel is idle, while the
        deadline allows (the snapshot must be written before the host goes)."""
        if not state.supported(self.language):
            return None, f"kernels of language {self.language!r} have no snapshot support"
        now, start = time.time(), time.monotonic()
        cell_bound = self.timings.cell_timeout
        end = start + self.timings.cell_timeout + MOVE_RETRY_SECONDS
        if deadline is not None:
            left = deadline - now
            cell_bound = max(1.0, min(cell_bound, left - 5))
            end = start + max(cell_bound + 1, left - 1)
        host = self.host  # the kernel's, until the move ends
        code = self._snapshot_code(host)
        client = self._client(target)
        interrupted = False
        why = ""
        try:
            for attempt in range(1, MOVE_SNAPSHOT_ATTEMPTS + 1):
                self.snapshot_report.unlink(missing_ok=True)
                msg_id = client.execute(code, silent=True, store_history=False)
                self.relay.hide(msg_id)  # its busy/idle is not the user's kernel status
                # shell requests run in order: this waits for a running cell
                wait = cell_bound if not interrupted else end - time.monotonic()
                reply = await self._reply(client, msg_id, max(0.1, wait))
                while reply is None and not interrupted and time.monotonic() < end:
                    if self.relay.execution_state == "busy":
                        self.log.warning(
                            "kernel %s: cell still running after %.0f s; interrupting it",
                            self.kernel_id,
                            time.monotonic() - start,
                        )
                        self.relay.hold_interrupted()
                        client.control_channel.send(
                            client.session.msg("interrupt_request", content={})
                        )
                        interrupted = True
                    # else the snapshot itself is what takes long: it goes on
                    reply = await self._reply(client, msg_id, max(0.1, end - time.monotonic()))
                if reply is None:
                    why = (
                        f"the kernel did not answer the snapshot request within "
                        f"{time.monotonic() - start:.0f} s"
                        + (" of the interrupt" if interrupted else "")
                    )
                    break
                report = await self._snapshot_result(host)
                why = snapshot_failure(reply, report)
                if not why:
                    # the cell running when the move began sent its reply before ours: give
                    # the relay a moment to pass it on before its sockets to this kernel close
                    await asyncio.sleep(0.1)
                    if attempt > 1:
                        self.log.warning(
                            "kernel %s: snapshot taken at attempt %d", self.kernel_id, attempt
                        )
                    return report, ""
                if time.monotonic() > end - 0.5:
                    break
                self.log.warning(
                    "kernel %s: snapshot attempt %d failed (%s); trying again",
                    self.kernel_id,
                    attempt,
                    why,
                )
                # the aborted request came back: the interrupted cell is ending
                await self._until_idle(end)
        finally:
            client.stop_channels()
        self.log.error("kernel %s: no snapshot for the move: %s", self.kernel_id, why)
        return None, why

    async def _until_idle(self, end: float) -> None:
        """Wait (up to ``end``, monotonic) until the kernel has ended the user's cell."""
        while self.relay.execution_state == "busy" and time.monotonic() < end:
            await asyncio.sleep(0.05)

    def _loss_notice(self, why: str, previous: tuple[dict[str, Any], float] | None) -> str:
        """What the user is told when a move has no snapshot of the kernel as it is now."""
        if previous is None:
            return (
                f"This kernel's host was reclaimed and its variables could not be saved "
                f"({why}): the kernel on the new host starts fresh, every variable is lost. "
                "Re-run the cells you need."
            )
        report, taken = previous
        count = report.get("execution_count", "?")
        age = max(0, round(time.time() - taken))
        return (
            f"This kernel's host was reclaimed and its variables could not be saved now "
            f"({why}). The kernel on the new host continues from its last snapshot, taken at "
            f"{time.strftime('%H:%M:%S', time.localtime(taken))} ({age} s before the move, "
            f"after cell [{count}]): what the cells after [{count}] did is lost. "
            "Re-run them."
        )

    async def _run_hidden(
        self, client: AsyncKernelClient, code: str, timeout: float
    ) -> dict | None:
        msg_id = client.execute(code, silent=True, store_history=False)
        self.relay.hide(msg_id)  # its busy/idle is not the user's kernel status
        return await self._reply(client, msg_id, timeout)

    async def _restore(
        self, target: dict[str, Any], snapshot: dict[str, Any] | None, quiet: bool = False
    ) -> dict[str, Any] | None:
        """Restore ``snapshot`` into the kernel at ``target``; ``quiet``: a loss is logged,
        not announced to the user (a pre-copy restored ahead of the switch)."""
        announce = self.relay.announce if not quiet else (lambda message: None)
        if snapshot is None or not snapshot.get("ok"):
            announce(
                "This kernel was moved to another machine without its variables (no snapshot "
                "of them could be taken): it starts fresh. Re-run the cells you need."
            )
            return None
        host = self._host_of(target)
        where = self.state_dir_on(host)
        report_path = Path(where) / RESTORE_REPORT
        code = state.restore_code(self.language, where)
        if self.transfer is None or host is None:
            report_path.unlink(missing_ok=True)
        else:
            try:
                # the snapshot's folder from the store, verified, into the new host's disk
                await self.transfer.load(
                    self.provider.agent(host),
                    self.kernel_id,
                    where,
                    checkpoint_id=snapshot.get(CHECKPOINT_KEY),
                    user=self.user or None,
                )
            except Exception as e:  # a tampered or missing checkpoint, an unreachable store
                report = {"ok": False, "error": f"its snapshot could not be loaded: {e}"}
                announce(state.lost_message(report) or "")
                return report
            code = drop_report_code(self.language, str(report_path)) + code
        client = self._client(target)
        try:
            msg_id = client.execute(code, silent=True, store_history=False)
            self.relay.hide(msg_id)
            await self._reply(client, msg_id, self.timings.start_timeout)
        finally:
            client.stop_channels()
        if self.transfer is None or host is None:
            found = _read_json(report_path)
        else:
            found = await self.transfer.read_json(
                self.provider.agent(host), self.kernel_id, where, RESTORE_REPORT
            )
        report = found or {"ok": False, "error": "no restore report"}
        message = state.lost_message(report)
        if message:
            self.log.warning("kernel %s: %s", self.kernel_id, message)
            announce(message)
        return report

    # -- the target kernel -----------------------------------------------------------------

    async def launch_on(self, host: Host) -> dict[str, Any]:
        """Start the kernel process on ``host`` with fresh ports and the relay's key (the
        relay then passes frames as they are, without re-signing); wait until it answers
        kernel_info. Returns its connection info."""
        agent = self.provider.agent(host)
        ports: list[int] = []
        for _ in range(20):
            port = await agent.free_port()
            if port not in ports:
                ports.append(port)
            if len(ports) == len(PORT_NAMES):
                break
        info = build_connection_info(host.address, ports, self.relay.key.decode())
        if self.transfer is not None:
            # the folder its snapshots go to, on this host's disk and the kernel user's
            await self.transfer.prepare(agent, self.state_dir_on(host), self.user or None)
        rel = f"kernels/{self.process}.json"
        path = os.path.join(host.disk, rel)
        argv = kernel_argv(self.argv, path)
        await agent.start_process(
            self.process,
            argv,
            {**self.env, state.HOST_ROOT: host.disk},
            self.cwd,
            files={rel: connection_file_text(info, self.kernel_name)},
            user=self.user or None,
        )
        client = self._client(info)
        try:
            ready = asyncio.create_task(client.wait_for_ready(timeout=self.timings.start_timeout))
            while not ready.done():
                await asyncio.wait({ready}, timeout=0.5)
                proc = await agent.process(self.process)
                if not ready.done() and proc and not proc.get("running"):
                    ready.cancel()
                    lines = "\n".join(await agent.log(self.process, tail=20))
                    raise KernelMoveError(
                        f"kernel {self.kernel_id} exited on {host.id} "
                        f"({proc.get('exit_code')}):\n{lines}"
                    )
            ready.result()
        except BaseException:
            await agent.stop_process(self.process, grace=0)
            raise
        finally:
            client.stop_channels()
        self.log.info("kernel %s runs on %s (%s)", self.kernel_id, host.id, host.address)
        self._launched[(info["ip"], info["shell_port"])] = host
        return info

    def _client(self, info: dict[str, Any]) -> AsyncKernelClient:
        client = AsyncKernelClient()
        client.load_connection_info(info)
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        return client

    @staticmethod
    async def _reply(client: AsyncKernelClient, msg_id: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await client.get_shell_msg(timeout=left)
            except Exception:  # queue.Empty on timeout
                return None
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg
        return None

    async def _retarget(self, target: dict[str, Any]) -> None:
        await self._flushed(self.relay.retarget(target))

    async def _flushed(self, flushed: asyncio.Task) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(flushed), self.relay.ready_timeout + 5)
        except asyncio.TimeoutError:
            self.log.warning("kernel %s: relay flush is slow; going on", self.kernel_id)

    async def _release(self, host: Host) -> None:
        try:
            await self.provider.release(host)
        except Exception as e:  # a host that is gone already is fine
            self.log.warning("kernel %s: releasing %s failed: %s", self.kernel_id, host.id, e)

    def _keep(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- background snapshots ----------------------------------------------------------------

    def _snapshot_due(self) -> bool:
        return bool(
            self.timings.snapshot_interval
            and self.target is not None
            and time.monotonic() - self._last_snapshot >= self.timings.snapshot_interval
            and self.relay.executes != self._snapshot_executes
            and self.relay.execution_state == "idle"
            and not self.relay.paused
        )

    async def _background_snapshot(self) -> None:
        """Snapshot an idle kernel that ran something since the last snapshot: what a host
        lost without notice comes back from."""
        assert self.target is not None
        executes = self.relay.executes
        self._last_snapshot = time.monotonic()
        try:
            report = await self._snapshot(self.target, self.timings.cell_timeout)
        except Exception as e:  # the kernel went away meanwhile: the watch sees to it
            self.log.warning("kernel %s: background snapshot failed: %s", self.kernel_id, e)
            return
        if report is not None:
            self._snapshot_executes = executes
            self.good_snapshot = (report, time.time())

    # -- persistence ---------------------------------------------------------------------------

    def to_info(self) -> dict[str, Any]:
        """What another process needs to take this kernel over (see ``reattach``)."""
        return {
            "version": INFO_VERSION,
            "host_id": self.host.id if self.host else None,
            "target": self.target,
            "relay": {
                "ip": self.relay.ip,
                "ports": dict(self.relay.ports),
                "key": self.relay.key.decode(),
                "signature_scheme": self.relay.signature_scheme,
            },
            "language": self.language,
            "state_dir": self.state_dir,
            "argv": self.argv,
            "cwd": self.cwd,
            "user": self.user,
        }

    @classmethod
    def from_info(
        cls, provider: HostProvider, kernel_id: str, info: dict[str, Any], **kw: Any
    ) -> MovableKernel:
        """A kernel object for ``info`` (not yet attached: call ``reattach``)."""
        if info.get("version", 1) > INFO_VERSION:
            raise KernelMoveError(f"kernel info version {info.get('version')} is too new")
        relay = info["relay"]
        kernel = cls(
            provider,
            kernel_id,
            info.get("language", ""),
            info["state_dir"],
            relay_ip=relay["ip"],
            relay_ports=relay["ports"],
            relay_key=relay["key"],
            **kw,
        )
        kernel.argv = list(info.get("argv") or [])
        kernel.cwd = info.get("cwd") or ""
        kernel.user = info.get("user") or kernel.user
        kernel.target = info.get("target")
        return kernel


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def python_executable(argv: list[str]) -> list[str]:
    """``python``/``python3`` in a kernelspec means this environment's Python, as
    jupyter_client's ``format_kernel_cmd`` has it (local hosts share this machine)."""
    names = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    if argv and argv[0] in names:
        return [sys.executable, *argv[1:]]
    return list(argv)
