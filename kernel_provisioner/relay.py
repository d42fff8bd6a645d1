"""A stable ZMQ endpoint for one kernel that moves between hosts.

Clients (jupyter_server, a gateway, a console) use the relay's connection info as if it were
the kernel. The relay forwards each channel to wherever the kernel runs now, re-signing every
message with that kernel's key, answers heartbeats itself, and queues requests while the
kernel moves (``pause()`` ... ``resume(new_target)``), so the client's sockets, ports and HMAC
key never change.

Routing design (shell, control, stdin): the client side is a ROUTER, the kernel side one
DEALER per channel, used as a broker: the client's identity frames travel with the message, so
the kernel sees ``[relay_id, client_id]`` as the idents and its reply comes back to our DEALER
prefixed with ``client_id``, which the ROUTER routes to the right client. No per-client
sockets or reply bookkeeping. The three DEALERs share one routing id because ipykernel sends
``input_request`` on stdin to the *shell* idents of the request, as it does for a real client
whose shell and stdin sockets share an identity.

Re-signing works on the raw frames: check the HMAC with one key, sign the same four frames
with the other. This is what a Session deserialize/serialize round trip does, minus re-encoding
JSON, so headers, dates, msg_ids and parent headers reach the other side byte for byte.

Run it in the process that owns the kernel's lifecycle (the provisioner); everything is
zmq.asyncio and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections import OrderedDict, deque
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import DELIM, Session, new_id_bytes

ROUTED = ("shell", "control", "stdin")
CHANNELS = (*ROUTED, "iopub", "hb")

# Remember this many forwarded request ids: enough to tell a client's output from the
# provisioner's own traffic (checkpoints) on iopub while paused.
_RECENT_IDS = 1000


def _as_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        return b""
    return key.encode() if isinstance(key, str) else key


def _split(frames: list[bytes], session: Session) -> tuple[list[bytes], list[bytes]] | None:
    """Idents and message parts (header, parent, metadata, content, buffers...) of a signed
    message, or None if it is malformed or its signature does not match ``session``'s key."""
    try:
        i = frames.index(DELIM)
    except ValueError:
        return None
    idents, parts = frames[:i], frames[i + 2 :]
    if len(parts) < 4:
        return None
    if session.auth is not None and not hmac.compare_digest(frames[i + 1], session.sign(parts[:4])):
        return None
    return idents, parts


def _msg_id(frame: bytes) -> str | None:
    """msg_id of a header or parent-header frame."""
    try:
        return json.loads(frame).get("msg_id")
    except (ValueError, AttributeError):
        return None


def _msg_type(frame: bytes) -> str | None:
    """msg_type of a header frame."""
    try:
        return json.loads(frame).get("msg_type")
    except (ValueError, AttributeError):
        return None


def _execution_state(content: bytes, default: str) -> str:
    try:
        return json.loads(content).get("execution_state") or default
    except (ValueError, AttributeError):
        return default


class KernelRelay:
    """One kernel's stable endpoint: fixed ip, ports and key; the kernel behind it can change.

    Usage::

        relay = KernelRelay(ip="127.0.0.1")
        await relay.start()
        relay.retarget(kernel_connection_info)   # clients use relay.connection_info
        relay.pause()                            # the kernel is moving: requests queue up
        await relay.resume(new_kernel_connection_info)  # queued requests go to the new kernel
    """

    def __init__(
        self,
        ip: str = "127.0.0.1",
        key: bytes | None = None,
        signature_scheme: str = "hmac-sha256",
        ports: dict[str, int] | None = None,
        *,
        ready_timeout: float = 10.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.ip = ip
        self.key = new_id_bytes() if key is None else _as_bytes(key)
        self.signature_scheme = signature_scheme
        self.ports = {f"{ch}_port": 0 for ch in CHANNELS}
        for name, port in (ports or {}).items():
            self.ports[name if name.endswith("_port") else f"{name}_port"] = int(port)
        # how long to wait for a new kernel's iopub before flushing the queue anyway
        self.ready_timeout = ready_timeout
        self.log = log or logging.getLogger(__name__)
        self.session = Session(key=self.key, signature_scheme=signature_scheme)

        self._ctx = zmq.asyncio.Context.instance()
        self._front: dict[str, zmq.asyncio.Socket] = {}
        self._back: dict[str, zmq.asyncio.Socket] = {}
        self._front_tasks: list[asyncio.Task] = []
        self._back_tasks: list[asyncio.Task] = []
        self._target: dict[str, Any] | None = None
        self._target_session: Session | None = None
        self._iopub_seen = asyncio.Event()
        # the gate: requests go straight to the kernel only while open; otherwise they queue
        self._open = False
        self._gen = 0  # bumped by pause/retarget so a stale flush stops
        self._queue: deque[tuple[str, list[bytes], list[bytes]]] = deque()
        self._recent: OrderedDict[str, None] = OrderedDict()
        # shell requests forwarded and not answered yet: a kernel that dies without notice
        # takes them along, and they go to its successor instead (requeue_unanswered)
        self._unanswered: OrderedDict[str, tuple[list[bytes], list[bytes]]] = OrderedDict()
        self._own: set[str] = set()  # ids of the relay's own nudges, never shown to clients
        self._target_alive: bool | None = None
        self._flush_task: asyncio.Task | None = None
        self._announcement = ""  # shown in the output of the next cell a client runs
        # a cell a move interrupts: its closing idle status waits for explain_interrupted()
        self._holding = False
        self._interrupted: bytes | None = None  # the parent header of its error
        self._held: list[tuple[list[bytes], list[bytes]]] = []  # its idle status, held back
        self._held_seen = asyncio.Event()
        self._executes = 0  # execute_requests forwarded so far
        self._shutdown_requested = False  # a client asked the current kernel to exit
        self._execution_state = "starting"  # the kernel's, from client requests' status
        self._stats = {"to_kernel": 0, "to_clients": 0, "dropped": 0, "retargets": 0}

    # -- public API ------------------------------------------------------------------------

    @property
    def connection_info(self) -> dict[str, Any]:
        """What clients use; stable across moves (valid after ``start()``)."""
        return {
            "transport": "tcp",
            "ip": self.ip,
            **self.ports,
            "key": self.key.decode(),
            "signature_scheme": self.signature_scheme,
        }

    @property
    def target(self) -> dict[str, Any] | None:
        return self._target

    @property
    def paused(self) -> bool:
        return not self._open

    @property
    def stats(self) -> dict[str, int]:
        return {**self._stats, "queued": len(self._queue)}

    @property
    def executes(self) -> int:
        """How many execute_requests clients have sent through the relay (so far)."""
        return self._executes

    @property
    def shutdown_requested(self) -> bool:
        """A client has sent the current kernel a shutdown_request (to exit, or to restart);
        its process is expected to end. Cleared by ``retarget()`` to a new process."""
        return self._shutdown_requested

    @property
    def execution_state(self) -> str:
        """The kernel's last status (busy/idle) for a client's request."""
        return self._execution_state

    def hide(self, msg_id: str) -> None:
        """Keep the kernel's iopub output for ``msg_id`` (a request of the provisioner's own,
        sent to the kernel directly) from clients."""
        self._own.add(msg_id)

    @property
    def target_alive(self) -> bool | None:
        """Result of the last ``probe_target()``; None before the first probe."""
        return self._target_alive

    async def start(self) -> None:
        """Bind the client-facing sockets. Requests queue until the first ``retarget()``."""
        for ch, kind in [(ch, zmq.ROUTER) for ch in ROUTED] + [
            ("iopub", zmq.XPUB),
            ("hb", zmq.ROUTER),
        ]:
            sock = self._ctx.socket(kind)
            sock.linger = 0
            if kind == zmq.ROUTER:
                # a client that reconnects with the same identity takes over its old pipe
                sock.router_handover = 1
            else:
                # see every subscription, so each subscriber gets its iopub_welcome
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            port = self.ports[f"{ch}_port"]
            sock.bind(f"tcp://{self.ip}:{port or '*'}")
            self.ports[f"{ch}_port"] = int(sock.last_endpoint.rsplit(b":", 1)[1])
            self._front[ch] = sock
        self._front_tasks = [
            *(asyncio.create_task(self._client_loop(ch)) for ch in ROUTED),
            asyncio.create_task(self._subscription_loop()),
            asyncio.create_task(self._hb_loop()),
        ]

    async def stop(self) -> None:
        self._open = False
        self._gen += 1
        tasks, self._front_tasks = [*self._close_back(), *self._front_tasks], []
        if self._flush_task is not None:
            tasks.append(self._flush_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in self._front.values():
            sock.close(linger=0)
        self._front = {}

    def pause(self) -> None:
        """Begin a gap: client requests queue, heartbeats are still answered, and iopub only
        carries the tail of output for requests the relay already forwarded."""
        self._open = False
        self._gen += 1

    def retarget(self, target: dict[str, Any]) -> asyncio.Task:
        """Point the relay at a (new) kernel and flush queued requests to it once its iopub is
        connected. Returns a task; await it to know the queue has been flushed."""
        self.pause()
        # replies still in flight from the old kernel are lost with its sockets; what it was
        # asked is its business (requeue_unanswered() first, if it died)
        self._close_back()
        self._unanswered.clear()
        self._shutdown_requested = False
        self._connect(target)
        self._stats["retargets"] += 1
        return self._keep(self._open_when_ready(self._gen))

    def resume(self, target: dict[str, Any] | None = None) -> asyncio.Task:
        """End a gap: flush queued requests to ``target`` (a new kernel) or, without one, to
        the current kernel. Returns a task; await it to know the queue has been flushed."""
        if target is not None:
            return self.retarget(target)
        if self._target is None:
            raise RuntimeError("resume() without a target before the first retarget()")
        self._gen += 1
        return self._keep(self._flush(self._gen))

    def requeue_unanswered(self) -> int:
        """Queue again the shell requests the current kernel never answered (it died): the
        next target runs them. Call while paused, before ``retarget()``. Returns how many."""
        pending = [("shell", idents, parts) for idents, parts in self._unanswered.values()]
        self._unanswered.clear()
        self._queue.extendleft(reversed(pending))
        return len(pending)

    def announce(self, text: str) -> None:
        """Show ``text`` (as stderr) in the output of the next cell a client runs: a kernel
        has no channel of its own to tell the user what a move could not carry over, and
        output without a parent request is not shown in a notebook."""
        self._announcement = "\n".join(filter(None, [self._announcement, text.strip()]))

    def hold_interrupted(self) -> None:
        """A move is about to interrupt the running cell: when it stops with an error, its
        closing idle status waits until ``explain_interrupted()`` has put in that cell's own
        output why it stopped (after the idle, a notebook no longer shows a cell's output)."""
        self._holding = True
        self._interrupted = None
        self._held = []
        self._held_seen = asyncio.Event()

    async def explain_interrupted(self, text: str, wait: float = 1.0) -> bool:
        """Show ``text`` (stderr) in the output of the cell ``hold_interrupted()`` was about,
        then let its idle status through. Waits up to ``wait`` seconds for that cell to end
        (its output reaches the relay on a socket of its own). False if no cell stopped with
        an error meanwhile: then nobody saw it interrupted, and ``text`` is not shown."""
        if not self._holding:
            return False
        if self._interrupted is None or not self._held:
            try:
                await asyncio.wait_for(self._held_seen.wait(), wait)
            except asyncio.TimeoutError:
                pass
        parent, held = self._interrupted, self._held
        self._holding, self._interrupted, self._held = False, None, []
        shown = False
        if parent is not None and text:
            await self._publish_stream(parent, text)
            shown = True
        for topic, parts in held:
            await self._front["iopub"].send_multipart(
                [*topic, DELIM, self.session.sign(parts[:4]), *parts]
            )
        return shown

    def _keep(self, coro: Any) -> asyncio.Task:
        # the loop holds tasks weakly: keep the flush alive when the caller does not await it
        self._flush_task = asyncio.ensure_future(coro)
        return self._flush_task

    async def probe_target(self, timeout: float = 1.0) -> bool:
        """Ping the kernel's own heartbeat (clients only ever see the relay's)."""
        if self._target is None:
            self._target_alive = False
            return False
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        try:
            sock.connect(self._url(self._target, "hb"))
            await sock.send(b"ping")
            self._target_alive = bool(await sock.poll(int(timeout * 1000)))
        finally:
            sock.close(linger=0)
        return self._target_alive

    # -- kernel side -----------------------------------------------------------------------

    @staticmethod
    def _url(info: dict[str, Any], ch: str) -> str:
        return f"{info.get('transport', 'tcp')}://{info['ip']}:{info[f'{ch}_port']}"

    def _connect(self, target: dict[str, Any]) -> None:
        self._target = dict(target)
        self._target_session = Session(
            key=_as_bytes(target.get("key")),
            signature_scheme=target.get("signature_scheme", "hmac-sha256"),
        )
        # a fresh routing id per kernel, the same on all three (see the module docstring)
        routing_id = f"relay-{uuid.uuid4().hex}".encode()
        self._back = {}
        for ch in ROUTED:
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.routing_id = routing_id
            sock.connect(self._url(target, ch))
            self._back[ch] = sock
        sub = self._ctx.socket(zmq.SUB)
        sub.linger = 0
        # everything: clients' own subscriptions are applied by our XPUB
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self._url(target, "iopub"))
        self._back["iopub"] = sub
        self._iopub_seen = asyncio.Event()
        self._own = set()
        self._back_tasks = [
            asyncio.create_task(self._kernel_loop(ch, sock, self._target_session))
            for ch, sock in self._back.items()
        ]

    def _close_back(self) -> list[asyncio.Task]:
        """Drop the kernel-side sockets; returns their (cancelled) tasks to await."""
        tasks, self._back_tasks = self._back_tasks, []
        for task in tasks:
            task.cancel()
        for sock in self._back.values():
            sock.close(linger=0)
        self._back = {}
        return tasks

    async def _open_when_ready(self, gen: int) -> None:
        """Wait until the new kernel's iopub reaches us, then flush. Requests sent earlier
        would have their busy/stream/idle lost to the PUB/SUB slow-joiner gap."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not self._iopub_seen.is_set() and gen == self._gen:
            # ipykernel answers a subscription with iopub_welcome; other kernels (IRkernel)
            # need a nudge: any request makes them publish a status
            await self._nudge()
            try:
                await asyncio.wait_for(self._iopub_seen.wait(), 0.2)
            except asyncio.TimeoutError:
                if loop.time() > deadline:
                    self.log.warning("relay: no iopub from %s; flushing anyway", self._target)
                    break
        await self._flush(gen)

    async def interrupt_kernel(self) -> bool:
        """Send the current kernel an interrupt_request of the relay's own, on the control
        socket already connected to it: no new connection to wait for, and it reaches the
        kernel before any shutdown_request a client sends after it (its reply, addressed
        to no client, is dropped). False if there is no kernel to send it to."""
        sock = self._back.get("control")
        if sock is None or self._target_session is None:
            return False
        msg = self._target_session.msg("interrupt_request", content={})
        await sock.send_multipart(self._target_session.serialize(msg))
        return True

    async def _nudge(self) -> None:
        assert self._target_session is not None
        msg = self._target_session.msg("kernel_info_request")
        self._own.add(msg["header"]["msg_id"])
        await self._back["shell"].send_multipart(self._target_session.serialize(msg))

    async def _flush(self, gen: int) -> None:
        while self._queue and gen == self._gen:
            ch, idents, parts = self._queue.popleft()
            await self._to_kernel(ch, idents, parts)
        if gen == self._gen:
            # no await between the empty check and opening: arrival order is kept
            self._open = True

    async def _to_kernel(self, ch: str, idents: list[bytes], parts: list[bytes]) -> None:
        assert self._target_session is not None
        msg_id = _msg_id(parts[0])
        if msg_id:
            self._recent[msg_id] = None
            if len(self._recent) > _RECENT_IDS:
                self._recent.popitem(last=False)
            if ch == "shell":
                self._unanswered[msg_id] = (idents, parts)
                if len(self._unanswered) > _RECENT_IDS:
                    self._unanswered.popitem(last=False)
        if b'"shutdown_request"' in parts[0]:
            self._shutdown_requested = True
        if ch == "shell" and b'"execute_request"' in parts[0]:
            self._executes += 1
            if self._announcement:
                await self._publish_announcement(parts[0])
        sig = self._target_session.sign(parts[:4])
        await self._back[ch].send_multipart([*idents, DELIM, sig, *parts])
        self._stats["to_kernel"] += 1

    async def _publish_announcement(self, request_header: bytes) -> None:
        text, self._announcement = self._announcement, ""
        await self._publish_stream(request_header, text)

    async def _publish_stream(self, parent_header: bytes, text: str) -> None:
        """stderr output of our own, in the output of the request ``parent_header`` names."""
        try:
            parent = json.loads(parent_header)
        except ValueError:
            return
        msg = self.session.msg(
            "stream", content={"name": "stderr", "text": text.rstrip() + "\n"}, parent=parent
        )
        await self._front["iopub"].send_multipart([b"stream", *self.session.serialize(msg)])

    async def _kernel_loop(self, ch: str, sock: zmq.asyncio.Socket, session: Session) -> None:
        """What the kernel sends on `ch`, re-signed, to the clients: replies and stdin
        input_requests to the client their idents name, iopub to every subscriber; what
        `_keep_back` says the clients must not see is dropped."""
        keep_back = self._keep_back_iopub if ch == "iopub" else self._keep_back_reply
        while True:
            frames = await sock.recv_multipart()
            split = _split(frames, session)
            if split is None:
                self._stats["dropped"] += 1
                continue
            idents, parts = split
            if keep_back(ch, idents, parts):
                continue
            await self._front[ch].send_multipart(
                [*idents, DELIM, self.session.sign(parts[:4]), *parts]
            )
            self._stats["to_clients"] += 1

    def _keep_back_reply(self, ch: str, idents: list[bytes], parts: list[bytes]) -> bool:
        if not idents:  # a reply to the relay's own nudge
            return True
        if ch == "shell":
            self._unanswered.pop(_msg_id(parts[1]) or "", None)
        return False

    def _keep_back_iopub(self, ch: str, topic: list[bytes], parts: list[bytes]) -> bool:
        self._iopub_seen.set()
        parent = _msg_id(parts[1])
        if b'"status"' in parts[0] and parent in self._recent:
            self._execution_state = _execution_state(parts[3], self._execution_state)
        if (
            parent in self._own
            or (not self._open and parent not in self._recent)
            # the kernel welcomed the relay's subscription, not the clients'
            or b'"iopub_welcome"' in parts[0]
        ):
            return True
        return self._holding and parent in self._recent and self._hold(topic, parts)

    def _hold(self, topic: list[bytes], parts: list[bytes]) -> bool:
        """While a move interrupts a cell: note the client cell that stopped with an error;
        keep back its idle status (True: not to be forwarded now)."""
        kind = _msg_type(parts[0])
        if kind == "error" and self._interrupted is None:
            self._interrupted = parts[1]
        elif (
            kind == "status"
            and self._interrupted is not None
            and _msg_id(parts[1]) == _msg_id(self._interrupted)
            and _execution_state(parts[3], "") == "idle"
        ):
            self._held.append((topic, parts))
            self._held_seen.set()
            return True
        return False

    # -- client side -----------------------------------------------------------------------

    async def _client_loop(self, ch: str) -> None:
        sock = self._front[ch]
        while True:
            frames = await sock.recv_multipart()
            split = _split(frames, self.session)
            if split is None:
                self.log.warning("relay: dropped an unsigned or malformed %s message", ch)
                self._stats["dropped"] += 1
                continue
            if self._open:
                await self._to_kernel(ch, *split)
            else:
                self._queue.append((ch, *split))

    async def _subscription_loop(self) -> None:
        """Welcome each iopub subscriber, as ipykernel does (JEP 65)."""
        sock = self._front["iopub"]
        while True:
            event = await sock.recv()
            if event[:1] != b"\x01":
                continue
            topic = event[1:]
            msg = self.session.msg("iopub_welcome", content={"subscription": topic.decode()})
            frames = self.session.serialize(msg)
            await sock.send_multipart([topic, *frames] if topic else frames)

    async def _hb_loop(self) -> None:
        """Echo every ping: during a move the kernel is alive as far as clients know."""
        sock = self._front["hb"]
        while True:
            await sock.send_multipart(await sock.recv_multipart())
