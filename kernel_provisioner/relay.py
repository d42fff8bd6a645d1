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

Signatures: a kernel started with the relay's own key (``MovableKernel`` starts every kernel
so) gets the clients' frames as they are, and its frames go to the clients as they are: the
relay checks the HMAC of what clients send and signs nothing. A target with another key (a
kernel started elsewhere, an Enterprise Gateway kernel, one moved to from such) gets re-signed
frames: check the HMAC with one key, sign the same four frames with the other. This is what a
Session deserialize/serialize round trip does, minus re-encoding JSON, so headers, dates,
msg_ids and parent headers reach the other side byte for byte.

Run it in the process that owns the kernel's lifecycle (the provisioner). The sockets are read
by the event loop itself (``_Port``: a reader on each socket's descriptor that drains it
without blocking, and sends that never block), not through zmq.asyncio futures: per message
that is a few microseconds instead of tens, which is most of what a relay costs on loopback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.session import DELIM, Session, new_id_bytes
from zmq.backend import Socket as _RawSocket

ROUTED = ("shell", "control", "stdin")
CHANNELS = (*ROUTED, "iopub", "hb")

# Remember this many forwarded request ids: enough to tell a client's output from the
# provisioner's own traffic (checkpoints) on iopub while paused.
_RECENT_IDS = 1000


def _as_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        return b""
    return key.encode() if isinstance(key, str) else key


# the sugar layer of pyzmq (enum flags, checks, futures) costs tens of microseconds per
# message; the relay calls the Cython socket's methods with plain int flags
_send = _RawSocket.send
_recv = _RawSocket.recv
_get = _RawSocket.get
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
# messages one socket hands over per turn of the event loop before the others get theirs
_BURST = 64


def _send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send a multipart message without blocking; zmq.Again if the socket cannot take it now
    (then none of it was sent: once the first frame is taken, zmq takes the rest)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, _SNDMORE_NOBLOCK if i < last else _NOBLOCK)


def _recv_frames(sock: zmq.Socket) -> list[bytes]:
    """A whole multipart message, or zmq.Again if none is waiting."""
    frames = [_recv(sock, _NOBLOCK)]
    while _get(sock, _RCVMORE):
        frames.append(_recv(sock, _NOBLOCK))
    return frames


class _Port:
    """One zmq socket read by the event loop: when its descriptor says something may have
    changed, every waiting message goes to ``on_message`` (up to _BURST per turn); ``send``
    never blocks (a message the socket cannot take now waits here, in order).

    A zmq socket's descriptor is edge-triggered: after any operation on the socket it must be
    looked at again (``_recheck``), or a message that arrived meanwhile would wait for the
    next edge."""

    def __init__(
        self,
        sock: zmq.Socket,
        on_message: Callable[[list[bytes]], None] | None,
        log: logging.Logger,
    ) -> None:
        self.sock = sock
        self.on_message = on_message
        self.log = log
        self.closed = False
        self._out: deque[list[bytes]] = deque()
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self._fd = sock.get(zmq.FD)
        self._loop.add_reader(self._fd, self._ready)
        self._recheck()

    def send(self, frames: list[bytes]) -> None:
        if not self._out:
            try:
                _send_frames(self.sock, frames)
            except zmq.Again:
                self._out.append(frames)
        else:
            self._out.append(frames)
        self._recheck()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self._fd)
            self.sock.close(linger=0)

    def _recheck(self) -> None:
        if self._scheduled or self.closed:
            return
        events = _get(self.sock, _EVENTS)
        if (events & _POLLIN and self.on_message is not None) or (self._out and events & _POLLOUT):
            self._scheduled = True
            self._loop.call_soon(self._ready)

    def _ready(self) -> None:
        self._scheduled = False
        if self.closed:
            return
        while self._out:
            try:
                _send_frames(self.sock, self._out[0])
            except zmq.Again:
                break
            self._out.popleft()
        if self.on_message is not None:
            for _ in range(_BURST):
                try:
                    frames = _recv_frames(self.sock)
                except zmq.Again:
                    break
                try:
                    self.on_message(frames)
                except Exception:
                    self.log.exception("relay: a message could not be handled")
                if self.closed:  # the handler closed this socket (a retarget)
                    return
        self._recheck()


def _split(frames: list[bytes]) -> tuple[list[bytes], bytes, list[bytes]] | None:
    """Idents, signature and message parts (header, parent, metadata, content, buffers...)
    of a message, or None if it is malformed."""
    try:
        i = frames.index(DELIM)
    except ValueError:
        return None
    if len(frames) < i + 6:
        return None
    return frames[:i], frames[i + 1], frames[i + 2 :]


def _signed(session: Session, sig: bytes, parts: list[bytes]) -> bool:
    """Whether ``sig`` is ``session``'s signature of the message ``parts``."""
    return session.auth is None or hmac.compare_digest(sig, session.sign(parts[:4]))


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

        self._ctx = zmq.Context.instance()
        self._front: dict[str, _Port] = {}
        self._back: dict[str, _Port] = {}
        self._target: dict[str, Any] | None = None
        self._target_session: Session | None = None
        # the target has the relay's key: frames pass as they are, nothing is re-signed
        self._same_key = False
        self._iopub_seen = asyncio.Event()
        # the gate: requests go straight to the kernel only while open; otherwise they queue
        self._open = False
        self._gen = 0  # bumped by pause/retarget so a stale flush stops
        self._queue: deque[tuple[str, list[bytes], bytes, list[bytes]]] = deque()
        self._recent: OrderedDict[str, None] = OrderedDict()
        # shell requests forwarded and not answered yet: a kernel that dies without notice
        # takes them along, and they go to its successor instead (requeue_unanswered)
        self._unanswered: OrderedDict[str, tuple[list[bytes], bytes, list[bytes]]] = OrderedDict()
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
    def resigning(self) -> bool:
        """Whether frames are re-signed for the current target (it has another key)."""
        return self._target is not None and not self._same_key

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
        handlers = {
            **{ch: self._client_handler(ch) for ch in ROUTED},
            "iopub": self._on_subscription,
            "hb": self._on_ping,
        }
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
            try:
                sock.bind(f"tcp://{self.ip}:{port or '*'}")
            except zmq.ZMQError:
                sock.close(linger=0)
                raise
            self.ports[f"{ch}_port"] = int(sock.last_endpoint.rsplit(b":", 1)[1])
            self._front[ch] = _Port(sock, handlers[ch], self.log)

    async def stop(self) -> None:
        self._open = False
        self._gen += 1
        self._close_back()
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)
        for port in self._front.values():
            port.close()
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
        return self._keep(self._flush_later(self._gen))

    def requeue_unanswered(self) -> int:
        """Queue again the shell requests the current kernel never answered (it died): the
        next target runs them. Call while paused, before ``retarget()``. Returns how many."""
        pending = [("shell", *entry) for entry in self._unanswered.values()]
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
            self._publish_stream(parent, text)
            shown = True
        for topic, parts in held:
            self._front["iopub"].send([*topic, DELIM, self.session.sign(parts[:4]), *parts])
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
        sock.connect(self._url(self._target, "hb"))
        pong = asyncio.get_running_loop().create_future()
        port = _Port(sock, lambda _: pong.done() or pong.set_result(True), self.log)
        try:
            port.send([b"ping"])
            await asyncio.wait_for(pong, timeout)
            self._target_alive = True
        except asyncio.TimeoutError:
            self._target_alive = False
        finally:
            port.close()
        return self._target_alive

    # -- kernel side -----------------------------------------------------------------------

    @staticmethod
    def _url(info: dict[str, Any], ch: str) -> str:
        return f"{info.get('transport', 'tcp')}://{info['ip']}:{info[f'{ch}_port']}"

    def _connect(self, target: dict[str, Any]) -> None:
        self._target = dict(target)
        scheme = target.get("signature_scheme", "hmac-sha256")
        key = _as_bytes(target.get("key"))
        self._target_session = Session(key=key, signature_scheme=scheme)
        self._same_key = hmac.compare_digest(key, self.key) and scheme == self.signature_scheme
        # a fresh routing id per kernel, the same on all three (see the module docstring)
        routing_id = f"relay-{uuid.uuid4().hex}".encode()
        self._back = {}
        self._iopub_seen = asyncio.Event()
        self._own = set()
        for ch in ROUTED:
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.routing_id = routing_id
            sock.connect(self._url(target, ch))
            self._back[ch] = _Port(sock, self._kernel_handler(ch), self.log)
        sub = self._ctx.socket(zmq.SUB)
        sub.linger = 0
        # everything: clients' own subscriptions are applied by our XPUB
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self._url(target, "iopub"))
        self._back["iopub"] = _Port(sub, self._kernel_handler("iopub"), self.log)

    def _close_back(self) -> None:
        """Drop the kernel-side sockets."""
        back, self._back = self._back, {}
        for port in back.values():
            port.close()

    async def _open_when_ready(self, gen: int) -> None:
        """Wait until the new kernel's iopub reaches us, then flush. Requests sent earlier
        would have their busy/stream/idle lost to the PUB/SUB slow-joiner gap."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not self._iopub_seen.is_set() and gen == self._gen:
            # ipykernel answers a subscription with iopub_welcome; other kernels (IRkernel)
            # need a nudge: any request makes them publish a status
            self._nudge()
            try:
                await asyncio.wait_for(self._iopub_seen.wait(), 0.2)
            except asyncio.TimeoutError:
                if loop.time() > deadline:
                    self.log.warning("relay: no iopub from %s; flushing anyway", self._target)
                    break
        self._flush(gen)

    async def interrupt_kernel(self) -> bool:
        """Send the current kernel an interrupt_request of the relay's own, on the control
        socket already connected to it: no new connection to wait for, and it reaches the
        kernel before any shutdown_request a client sends after it (its reply, addressed
        to no client, is dropped). False if there is no kernel to send it to."""
        port = self._back.get("control")
        if port is None or self._target_session is None:
            return False
        msg = self._target_session.msg("interrupt_request", content={})
        port.send(self._target_session.serialize(msg))
        return True

    def _nudge(self) -> None:
        assert self._target_session is not None
        msg = self._target_session.msg("kernel_info_request")
        self._own.add(msg["header"]["msg_id"])
        self._back["shell"].send(self._target_session.serialize(msg))

    async def _flush_later(self, gen: int) -> None:
        self._flush(gen)

    def _flush(self, gen: int) -> None:
        # no await in here: nothing a client sends meanwhile can overtake the queue
        while self._queue and gen == self._gen:
            self._to_kernel(*self._queue.popleft())
        if gen == self._gen:
            self._open = True

    def _to_kernel(self, ch: str, idents: list[bytes], sig: bytes, parts: list[bytes]) -> None:
        assert self._target_session is not None
        msg_id = _msg_id(parts[0])
        if msg_id:
            self._recent[msg_id] = None
            if len(self._recent) > _RECENT_IDS:
                self._recent.popitem(last=False)
            if ch == "shell":
                self._unanswered[msg_id] = (idents, sig, parts)
                if len(self._unanswered) > _RECENT_IDS:
                    self._unanswered.popitem(last=False)
        if b'"shutdown_request"' in parts[0]:
            self._shutdown_requested = True
        if ch == "shell" and b'"execute_request"' in parts[0]:
            self._executes += 1
            if self._announcement:
                self._publish_announcement(parts[0])
        if not self._same_key:
            sig = self._target_session.sign(parts[:4])
        self._back[ch].send([*idents, DELIM, sig, *parts])
        self._stats["to_kernel"] += 1

    def _publish_announcement(self, request_header: bytes) -> None:
        text, self._announcement = self._announcement, ""
        self._publish_stream(request_header, text)

    def _publish_stream(self, parent_header: bytes, text: str) -> None:
        """stderr output of our own, in the output of the request ``parent_header`` names."""
        try:
            parent = json.loads(parent_header)
        except ValueError:
            return
        msg = self.session.msg(
            "stream", content={"name": "stderr", "text": text.rstrip() + "\n"}, parent=parent
        )
        self._front["iopub"].send([b"stream", *self.session.serialize(msg)])

    def _kernel_handler(self, ch: str) -> Callable[[list[bytes]], None]:
        """What the kernel sends on `ch`, to the clients (re-signed if the kernel has another
        key): replies and stdin input_requests to the client their idents name, iopub to
        every subscriber; what `_keep_back` says the clients must not see is dropped."""
        keep_back = self._keep_back_iopub if ch == "iopub" else self._keep_back_reply

        def on_message(frames: list[bytes]) -> None:
            split = _split(frames)
            session = self._target_session
            if split is None or session is None:
                self._stats["dropped"] += 1
                return
            idents, sig, parts = split
            if not self._same_key:
                # with the relay's own key, the clients check the kernel's signature
                if not _signed(session, sig, parts):
                    self._stats["dropped"] += 1
                    return
                frames = [*idents, DELIM, self.session.sign(parts[:4]), *parts]
            if keep_back(ch, idents, parts):
                return
            self._front[ch].send(frames)
            self._stats["to_clients"] += 1

        return on_message

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

    def _client_handler(self, ch: str) -> Callable[[list[bytes]], None]:
        def on_message(frames: list[bytes]) -> None:
            split = _split(frames)
            # the relay only passes on what a client holding the key signed
            if split is None or not _signed(self.session, split[1], split[2]):
                self.log.warning("relay: dropped an unsigned or malformed %s message", ch)
                self._stats["dropped"] += 1
                return
            if self._open:
                self._to_kernel(ch, *split)
            else:
                self._queue.append((ch, *split))

        return on_message

    def _on_subscription(self, frames: list[bytes]) -> None:
        """Welcome each iopub subscriber, as ipykernel does (JEP 65)."""
        event = frames[0]
        if event[:1] != b"\x01":
            return
        topic = event[1:]
        msg = self.session.msg("iopub_welcome", content={"subscription": topic.decode()})
        out = self.session.serialize(msg)
        self._front["iopub"].send([topic, *out] if topic else out)

    def _on_ping(self, frames: list[bytes]) -> None:
        """Echo every ping: during a move the kernel is alive as far as clients know."""
        self._front["hb"].send(frames)
