"""Party channels over mutually authenticated TLS 1.3: a ``torch.distributed`` process group for CrypTen.

With ``MPCConfig.transport: tls`` every message of a session (shares, openings, seeds and keys, the
dealer's requests and answers, mpcformer's and CrypTen's alike) travels over TLS 1.3 connections
between ranks that each present a certificate of the session's CA (:mod:`mpcformer.mpc.credentials`).
``torch.distributed`` stays the API, so nothing above it changes (the cost ledger, the leak harness
and the tap see the same calls): the runtime's ``secure_transport`` patches register the
``mpcformer_tls`` backend and make ``init_process_group`` use it with a process-local store in
place of gloo and its TCP store, so no cleartext or unauthenticated port remains.

1. **Rendezvous.** Rank 0 listens on the session's ``tcp://host:port``; every other rank connects.
   Both sides check the other's certificate: signed by the session CA, named
   ``mpcformer-rank-<r>`` for the rank expected (rank 0) or claimed (the others). A connection
   without the session's credentials fails its handshake, is logged and dropped; the rendezvous
   waits on for the real ranks.
2. **Mesh.** Each rank also listens on a port of its own; rank 0 hands every rank the others'
   addresses, and each pair of ranks opens one connection (the higher rank connects to the lower).
   Every listener closes once its rank is connected to all others.
3. **Messages.** :class:`TlsProcessGroup` runs the operations CrypTen uses (send, recv, broadcast,
   all-reduce SUM/BXOR, reduce, all-gather, gather, scatter, barrier) as messages on those
   connections: one process group per torch group, one connection per pair of ranks, a reader
   thread per connection. Sends are written before the call returns; receives complete when the
   message arrives, or fail at the session's deadline naming what they waited for.

TLS itself is Python's ``ssl`` (OpenSSL): 1.3 only, certificates required on both sides, on
memory buffers so that one connection can be read and written by two threads safely.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from mpcformer.mpc.credentials import Credentials, load_credentials, rank_name

__all__ = ["BACKEND", "BACKEND_SPEC", "TransportError", "TlsProcessGroup", "Mesh", "backend_plugin", "init_over_tls",
           "close_mesh", "active_mesh"]

log = logging.getLogger(__name__)

BACKEND = "mpcformer_tls"
#: What ``init_process_group`` is given: our backend for CPU tensors (CUDA parties stage through host memory).
BACKEND_SPEC = f"cpu:{BACKEND}"
_HEADER = struct.Struct("!QQQ")  # channel, sequence number, payload bytes
_LENGTH = struct.Struct("!I")  # control messages (hello, address table): a length, then JSON
_CHUNK = 1 << 18  # bytes encrypted or read at a time
_HANDSHAKE_S = 10.0  # a connection that does not finish its handshake in this time is dropped
_RANK_NAME = re.compile(r"mpcformer-rank-(\d+)")


class TransportError(RuntimeError):
    """A TLS party channel failed: refused, closed, or a wait past the session's deadline."""


# -- one TLS connection ---------------------------------------------------------------------------
def _context(creds: Credentials, server: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    if server:
        context.num_tickets = 0  # no resumption: every connection authenticates in full
    else:
        context.check_hostname = False  # peers are checked by their certificate's rank name, not their address
    context.load_cert_chain(creds.cert, creds.key)
    context.load_verify_locations(creds.ca)
    return context


class _Channel:
    """A TLS connection on a plain socket through memory buffers: any thread sends (whole messages,
    under a lock), one reader thread receives."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server: bool, deadline: float):
        # A round is a small message each way: without TCP_NODELAY, Nagle's algorithm holds a record
        # back until the peer's delayed ACK (40 ms on Linux), as gloo's sockets avoid too.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server)
        self._tls_lock = threading.Lock()  # the TLS state
        self._send_lock = threading.Lock()  # ciphertext leaves in the order it was made
        self._ciphertext = bytearray(_CHUNK)  # what the socket gave, before it goes into the TLS state
        self._handshake(deadline)
        self.peer_rank = self._peer_rank()

    def _handshake(self, deadline: float) -> None:
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(_CHUNK)
                if not data:
                    raise ConnectionError("the peer closed the connection during the TLS handshake")
                self._incoming.write(data)
        self._flush()
        self.sock.settimeout(None)

    def _flush(self, min_bytes: int = 1) -> None:
        """Send the ciphertext waiting in the outgoing buffer, if it holds at least ``min_bytes``."""
        with self._tls_lock:
            data = self._outgoing.read() if self._outgoing.pending >= min_bytes else b""
        if data:
            self.sock.sendall(data)

    def _peer_rank(self) -> int:
        cert = self.tls.getpeercert() or {}
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        ranks = [int(m.group(1)) for m in map(_RANK_NAME.fullmatch, names) if m]
        if len(ranks) != 1:
            raise TransportError(f"the peer's certificate names no rank (subject {cert.get('subject')})")
        return ranks[0]

    def send(self, *parts: Any) -> None:
        """Encrypt and send ``parts`` (bytes-like) as one uninterrupted stretch of the stream; a small
        message leaves in one segment (its header and payload records together)."""
        with self._send_lock:
            for part in parts:
                view = memoryview(part).cast("B")
                for start in range(0, len(view), _CHUNK):
                    with self._tls_lock:
                        self.tls.write(view[start:start + _CHUNK])
                    self._flush(min_bytes=_CHUNK)
            self._flush()

    def read_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` with plaintext (the reader thread, or the rendezvous before it starts)."""
        filled = 0
        while filled < len(buffer):
            with self._tls_lock:
                try:
                    got = self.tls.read(len(buffer) - filled, buffer[filled:])
                except ssl.SSLWantReadError:
                    got = None
                except ssl.SSLZeroReturnError:
                    got = 0
            if got == 0:
                raise ConnectionError("the peer closed the TLS connection")
            if got is not None:
                filled += got
                continue
            received = self.sock.recv_into(self._ciphertext)
            if not received:
                raise ConnectionError("the peer closed the connection")
            with self._tls_lock:
                self._incoming.write(memoryview(self._ciphertext)[:received])

    def read_exact(self, n: int) -> bytearray:
        buffer = bytearray(n)
        if n:
            self.read_into(memoryview(buffer))
        return buffer

    def send_control(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        self.send(_LENGTH.pack(len(payload)) + payload)

    def read_control(self) -> dict:
        (length,) = _LENGTH.unpack(self.read_exact(_LENGTH.size))
        if length > 1 << 20:
            raise TransportError(f"control message of {length} bytes refused")
        return json.loads(self.read_exact(length))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# -- the mesh: a connection to every other rank ------------------------------------------------------
@dataclass
class _Wait:
    """A receive posted before its message arrived."""

    seq: int
    deliver: Callable[[memoryview | None], None]  # None: the payload is already in ``target``
    fail: Callable[[BaseException], None]
    deadline: float
    what: str
    target: memoryview | None  # where the payload goes, if the receiver knows (it is read straight in)

    def takes(self, seq: int, nbytes: int) -> bool:
        return self.target is not None and self.seq == seq and len(self.target) == nbytes


@dataclass
class _Inbox:
    messages: collections.deque = field(default_factory=collections.deque)  # (seq, payload) not yet asked for
    waits: collections.deque = field(default_factory=collections.deque)  # _Wait not yet answered


def _address(rendezvous: str) -> tuple[str, int]:
    url = urlparse(rendezvous)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        raise TransportError(f"TLS transport needs a tcp://host:port rendezvous, got {rendezvous!r}")
    return url.hostname, url.port


class Mesh:
    """TLS connections from rank ``rank`` to every other rank of a session (module doc, steps 1-2)."""

    def __init__(self, rank: int, world_size: int, rendezvous: str, credentials: Credentials, timeout_s: float):
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.rendezvous = rendezvous
        self._client = _context(credentials, server=False)
        self._server = _context(credentials, server=True)
        self.channels: dict[int, _Channel] = {}
        self.refused: list[str] = []  # connections dropped at the rendezvous or a listener, with the reason
        self._inboxes: dict[tuple[int, int], _Inbox] = collections.defaultdict(_Inbox)
        self._lock = threading.Lock()
        self._lost: dict[int, BaseException] = {}
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- joining -----------------------------------------------------------------------------------
    def connect(self) -> "Mesh":
        deadline = time.monotonic() + self.timeout_s
        host, port = _address(self.rendezvous)
        try:
            if self.rank == 0:
                self._serve_rendezvous(port, deadline)
            else:
                self._join(host, port, deadline)
        except BaseException:
            self.close()
            raise
        for peer, channel in self.channels.items():
            thread = threading.Thread(target=self._read_loop, args=(peer, channel), daemon=True,
                                      name=f"mpcformer-tls-{self.rank}-from-{peer}")
            thread.start()
            self._threads.append(thread)
        watchdog = threading.Thread(target=self._watch_deadlines, daemon=True, name=f"mpcformer-tls-{self.rank}-deadlines")
        watchdog.start()
        self._threads.append(watchdog)
        log.info("rank %d: TLS channels to ranks %s", self.rank, sorted(self.channels))
        return self

    def _accept(self, listener: socket.socket, expected: set[int], deadline: float, what: str) -> dict[int, tuple[_Channel, dict]]:
        """Authenticated connections from the ranks in ``expected`` (each with its hello); others are dropped."""
        joined: dict[int, tuple[_Channel, dict]] = {}
        listener.settimeout(0.5)
        while len(joined) < len(expected):
            if time.monotonic() > deadline:
                missing = sorted(expected - set(joined))
                raise TransportError(f"rank {self.rank}: rank(s) {missing} did not join {what} within {self.timeout_s:.0f}s")
            try:
                sock, peer = listener.accept()
            except socket.timeout:
                continue
            try:
                channel = _Channel(sock, self._server, True, min(deadline, time.monotonic() + _HANDSHAKE_S))
                sock.settimeout(max(0.1, min(deadline, time.monotonic() + _HANDSHAKE_S) - time.monotonic()))
                hello = channel.read_control()
                sock.settimeout(None)
                rank = channel.peer_rank
                if hello.get("rank") != rank or rank not in expected or rank in joined:
                    raise TransportError(f"certificate of rank {rank}, claims rank {hello.get('rank')}, expected one of "
                                         f"{sorted(expected - set(joined))}")
            except (OSError, ssl.SSLError, ValueError, TransportError) as err:
                reason = f"{peer[0]}:{peer[1]}: {type(err).__name__}: {err}"
                self.refused.append(reason)
                log.warning("rank %d: refused a connection to %s from %s", self.rank, what, reason)
                sock.close()
                continue
            joined[rank] = (channel, hello)
        return joined

    def _serve_rendezvous(self, port: int, deadline: float) -> None:
        with socket.create_server(("", port)) as listener:
            joined = self._accept(listener, set(range(1, self.world_size)), deadline, f"the rendezvous on port {port}")
        table = {str(rank): hello["listen"] for rank, (_, hello) in joined.items()}
        for rank, (channel, _) in joined.items():
            channel.send_control({"peers": table})
            self.channels[rank] = channel

    def _join(self, host: str, port: int, deadline: float) -> None:
        with socket.create_server(("", 0)) as listener:
            channel = self._connect(host, port, 0, deadline)
            my_host = channel.sock.getsockname()[0]  # the address that reaches rank 0 reaches the others too
            channel.send_control({"rank": self.rank, "listen": [my_host, listener.getsockname()[1]]})
            channel.sock.settimeout(max(0.1, deadline - time.monotonic()))
            peers = channel.read_control()["peers"]
            channel.sock.settimeout(None)
            self.channels[0] = channel
            for rank in range(1, self.rank):
                peer_host, peer_port = peers[str(rank)]
                lower = self._connect(peer_host, peer_port, rank, deadline)
                lower.send_control({"rank": self.rank})
                self.channels[rank] = lower
            higher = set(range(self.rank + 1, self.world_size))
            for rank, (upper, _) in self._accept(listener, higher, deadline, f"rank {self.rank}'s mesh port").items():
                self.channels[rank] = upper

    def _connect(self, host: str, port: int, rank: int, deadline: float) -> _Channel:
        """A TLS connection to ``rank`` at ``host:port`` (retried until it listens or the deadline)."""
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise TransportError(f"rank {self.rank}: could not reach rank {rank} at {host}:{port} within "
                                         f"{self.timeout_s:.0f}s: {err}") from err
                time.sleep(0.2)
        try:
            channel = _Channel(sock, self._client, False, deadline)
        except BaseException:
            sock.close()
            raise
        if channel.peer_rank != rank:
            channel.close()
            raise TransportError(f"rank {self.rank}: {host}:{port} presented rank {channel.peer_rank}'s certificate, "
                                 f"expected rank {rank}'s")
        return channel

    # -- messages ----------------------------------------------------------------------------------
    def send(self, dst: int, channel: int, seq: int, payload: Any) -> None:
        if dst in self._lost:
            raise TransportError(f"rank {self.rank}: the connection to rank {dst} is gone: {self._lost[dst]}")
        view = memoryview(payload).cast("B")
        try:
            self.channels[dst].send(_HEADER.pack(channel, seq, len(view)), view)
        except OSError as err:  # the peer left while we sent (its reader here may not know yet)
            raise TransportError(f"rank {self.rank}: the connection to rank {dst} is gone: {err}") from err

    def expect(self, src: int, channel: int, seq: int, deliver: Callable[[memoryview | None], None],
               fail: Callable[[BaseException], None], what: str, target: memoryview | None = None) -> None:
        """Call ``deliver(payload)`` with message ``seq`` of ``channel`` from ``src`` (now if it is here), or
        ``fail(error)`` when the connection drops or the deadline passes. With ``target`` (writable bytes
        of the message's size), a message that arrives later is decrypted straight into it and
        ``deliver(None)`` is called."""
        with self._lock:
            inbox = self._inboxes[(src, channel)]
            message = inbox.messages.popleft() if inbox.messages else None
            lost = self._lost.get(src) if message is None else None
            if message is None and lost is None:
                inbox.waits.append(_Wait(seq, deliver, fail, time.monotonic() + self.timeout_s, what, target))
                return
        if lost is not None:
            fail(TransportError(f"rank {self.rank}: no {what} from rank {src}: the connection is gone: {lost}"))
        elif message[0] != seq:
            fail(TransportError(f"rank {self.rank}: {what} from rank {src}: message {message[0]} arrived for {seq}"))
        else:
            deliver(message[1])

    def _read_loop(self, src: int, channel: _Channel) -> None:
        try:
            while True:
                channel_id, seq, nbytes = _HEADER.unpack(channel.read_exact(_HEADER.size))
                with self._lock:
                    inbox = self._inboxes[(src, channel_id)]
                    wait = inbox.waits.popleft() if inbox.waits else None
                if wait is not None and wait.takes(seq, nbytes):  # posted first: no copy
                    self._read_into_wait(src, channel, wait)
                    continue
                payload = _payload_buffer(nbytes)
                channel.read_into(payload)
                if wait is None:  # a receive posted while we read takes it; else it waits in the inbox
                    with self._lock:
                        wait = inbox.waits.popleft() if inbox.waits else None
                        if wait is None:
                            inbox.messages.append((seq, payload))
                if wait is not None:
                    if wait.seq != seq:
                        wait.fail(TransportError(f"rank {self.rank}: {wait.what} from rank {src}: message {seq} "
                                                 f"arrived for {wait.seq}"))
                    else:
                        wait.deliver(payload)
        except BaseException as err:  # noqa: BLE001 - every pending receive learns why
            self._drop(src, err)

    def _read_into_wait(self, src: int, channel: _Channel, wait: _Wait) -> None:
        try:
            channel.read_into(wait.target)
        except BaseException as err:
            wait.fail(TransportError(f"rank {self.rank}: no {wait.what} from rank {src}: the connection closed ({err})"))
            raise
        wait.deliver(None)

    def _drop(self, src: int, err: BaseException) -> None:
        with self._lock:
            self._lost.setdefault(src, err if not self._closed.is_set() else TransportError("the session closed"))
            waits = [w for (peer, _), inbox in self._inboxes.items() if peer == src for w in inbox.waits]
            for (peer, _), inbox in self._inboxes.items():
                if peer == src:
                    inbox.waits.clear()
        for wait in waits:
            wait.fail(TransportError(f"rank {self.rank}: no {wait.what} from rank {src}: the connection closed ({err})"))

    def _watch_deadlines(self) -> None:
        while not self._closed.wait(0.5):
            now, expired = time.monotonic(), []
            with self._lock:
                for (src, _), inbox in self._inboxes.items():
                    while inbox.waits and inbox.waits[0].deadline < now:
                        expired.append((src, inbox.waits.popleft()))
            for src, wait in expired:
                wait.fail(TransportError(f"rank {self.rank}: timed out after {self.timeout_s:.0f}s waiting for "
                                         f"{wait.what} from rank {src}"))

    def close(self) -> None:
        self._closed.set()
        for channel in self.channels.values():
            channel.close()


# -- the process group -------------------------------------------------------------------------------
def _channel_id(*parts: Any) -> int:
    """A 64-bit channel number every rank derives alike from a group name and a purpose."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    if tensor.device.type != "cpu":
        raise TransportError(f"the TLS transport carries CPU tensors (got {tensor.device}); CUDA parties stage via host")
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _payload_buffer(nbytes: int) -> memoryview:
    """Room for a message nobody waits for yet (uninitialised: it is filled at once)."""
    return memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy())


def _target(tensor: torch.Tensor) -> memoryview | None:
    """The bytes of ``tensor`` a message can be decrypted straight into (a contiguous CPU tensor)."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or not tensor.numel():
        return None
    return memoryview(tensor.detach().view(-1).view(torch.uint8).numpy())


def _fill(tensor: torch.Tensor, payload: memoryview | None) -> None:
    if payload is None:  # decrypted straight into the tensor
        return
    expected = tensor.numel() * tensor.element_size()
    if len(payload) != expected:
        raise TransportError(f"received {len(payload)} bytes for a tensor of {expected} ({tuple(tensor.shape)}, {tensor.dtype})")
    if expected:
        tensor.copy_(torch.frombuffer(payload, dtype=tensor.dtype).view(tensor.shape))


def _reducer(op: Any) -> Callable[[torch.Tensor, torch.Tensor], None]:
    if op == dist.ReduceOp.SUM:
        return lambda acc, other: acc.add_(other)  # int64 wraps modulo 2^64, as the ring does
    if op == dist.ReduceOp.BXOR:
        return lambda acc, other: acc.bitwise_xor_(other)
    raise TransportError(f"the TLS transport reduces with SUM or BXOR only, not {op}")


class _Pending:
    """A torch future that completes once ``count`` messages were delivered and ``finish`` ran."""

    def __init__(self, count: int, result: Any, finish: Callable[[], None] = lambda: None):
        self.future: torch.futures.Future = torch.futures.Future()
        self._left, self._result, self._finish = count, result, finish
        self._lock = threading.Lock()
        self._failed = False
        if count == 0:
            self._complete()

    def arrived(self) -> None:
        with self._lock:
            self._left -= 1
            done = self._left == 0 and not self._failed
        if done:
            self._complete()

    def _complete(self) -> None:
        try:
            self._finish()
        except BaseException as err:  # noqa: BLE001
            self.fail(err)
            return
        self.future.set_result(self._result)

    def fail(self, err: BaseException) -> None:
        with self._lock:
            if self._failed:
                return
            self._failed = True
        self.future.set_exception(err)

    def work(self) -> Any:
        from torch._C._distributed_c10d import _create_work_from_future

        return _create_work_from_future(self.future)


class TlsProcessGroup(dist.ProcessGroup):
    """A torch.distributed process group whose messages travel on the session's :class:`Mesh`."""

    def __init__(self, mesh: Mesh, group_id: str, rank: int, size: int, global_ranks: list[int]):
        super().__init__(rank, size)
        self._mesh, self._global = mesh, list(global_ranks)
        self._group = self._group_name = group_id
        self._collective = _channel_id(group_id, "collective")
        self._seq = itertools.count()
        self._p2p: dict[tuple[str, int, int], itertools.count] = {}
        self._p2p_lock = threading.Lock()

    def getBackendName(self) -> str:  # noqa: N802 - torch's name
        return BACKEND

    # torch keeps a group's name in its backends; this group is its own backend, so it keeps the name
    # (without it, destroy_process_group fails and CrypTen's teardown stops half-way)
    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    @property
    def group_name(self) -> str:
        return self._group_name

    def __repr__(self) -> str:
        return f"TlsProcessGroup({self._group}, rank {self.rank()} of {self._global})"

    # -- helpers -----------------------------------------------------------------------------------
    def _next_p2p(self, way: str, peer: int, tag: int) -> int:
        with self._p2p_lock:
            return next(self._p2p.setdefault((way, peer, tag), itertools.count()))

    def _send(self, peer: int, channel: int, seq: int, tensor: torch.Tensor) -> None:
        self._mesh.send(self._global[peer], channel, seq, _as_bytes(tensor))

    def _receive(self, pending: _Pending, peer: int, channel: int, seq: int, into: Callable[[memoryview | None], None],
                 what: str, target: memoryview | None = None) -> None:
        def deliver(payload: memoryview | None) -> None:
            try:
                into(payload)
            except BaseException as err:  # noqa: BLE001
                pending.fail(err)
                return
            pending.arrived()

        self._mesh.expect(self._global[peer], channel, seq, deliver, pending.fail, f"{what} ({self._group})", target)

    def _peers(self) -> list[int]:
        return [r for r in range(self.size()) if r != self.rank()]

    # -- point to point ----------------------------------------------------------------------------
    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> Any:
        channel = _channel_id(self._group, "p2p", tag)
        self._send(dst, channel, self._next_p2p("to", dst, tag), tensors[0])
        return _Pending(0, tensors).work()

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> Any:
        channel = _channel_id(self._group, "p2p", tag)
        pending = _Pending(1, tensors)
        self._receive(pending, src, channel, self._next_p2p("from", src, tag),
                      functools.partial(_fill, tensors[0]), f"a message (tag {tag})", _target(tensors[0]))
        return pending.work()

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int) -> Any:
        raise TransportError("the TLS transport needs the source rank of every receive")

    # -- collectives -------------------------------------------------------------------------------
    def broadcast(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        seq, root = next(self._seq), opts.rootRank
        if self.rank() == root:
            for peer in self._peers():
                self._send(peer, self._collective, seq, tensors[0])
            return _Pending(0, tensors).work()
        pending = _Pending(1, tensors)
        self._receive(pending, root, self._collective, seq, functools.partial(_fill, tensors[0]), "a broadcast",
                      _target(tensors[0]))
        return pending.work()

    def _reduce_into(self, tensor: torch.Tensor, op: Any, peers: list[int], seq: int, result: Any, what: str) -> _Pending:
        reduce = _reducer(op)
        received = {peer: torch.empty_like(tensor, memory_format=torch.contiguous_format) for peer in peers}

        def finish() -> None:
            for peer in sorted(received):
                reduce(tensor, received[peer])

        pending = _Pending(len(peers), result, finish)
        for peer in peers:
            self._receive(pending, peer, self._collective, seq, functools.partial(_fill, received[peer]), what,
                          _target(received[peer]))
        return pending

    def allreduce(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        seq, peers = next(self._seq), self._peers()
        for peer in peers:
            self._send(peer, self._collective, seq, tensors[0])
        return self._reduce_into(tensors[0], opts.reduceOp, peers, seq, tensors, "an all-reduce").work()

    def reduce(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        seq, root = next(self._seq), opts.rootRank
        if self.rank() != root:
            self._send(root, self._collective, seq, tensors[0])
            return _Pending(0, tensors).work()
        return self._reduce_into(tensors[0], opts.reduceOp, self._peers(), seq, tensors, "a reduce").work()

    def allgather(self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any) -> Any:
        seq, outputs = next(self._seq), output_lists[0]
        for peer in self._peers():
            self._send(peer, self._collective, seq, inputs[0])
        outputs[self.rank()].copy_(inputs[0])
        pending = _Pending(len(self._peers()), output_lists)
        for peer in self._peers():
            self._receive(pending, peer, self._collective, seq, functools.partial(_fill, outputs[peer]), "an all-gather",
                          _target(outputs[peer]))
        return pending.work()

    def gather(self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any) -> Any:
        seq, root = next(self._seq), opts.rootRank
        if self.rank() != root:
            self._send(root, self._collective, seq, inputs[0])
            return _Pending(0, output_lists).work()
        outputs = output_lists[0]
        outputs[root].copy_(inputs[0])
        pending = _Pending(len(self._peers()), output_lists)
        for peer in self._peers():
            self._receive(pending, peer, self._collective, seq, functools.partial(_fill, outputs[peer]), "a gather",
                          _target(outputs[peer]))
        return pending.work()

    def scatter(self, outputs: list[torch.Tensor], input_lists: list[list[torch.Tensor]], opts: Any) -> Any:
        seq, root = next(self._seq), opts.rootRank
        if self.rank() == root:
            pieces = input_lists[0]
            for peer in self._peers():
                self._send(peer, self._collective, seq, pieces[peer])
            outputs[0].copy_(pieces[root])
            return _Pending(0, outputs).work()
        pending = _Pending(1, outputs)
        self._receive(pending, root, self._collective, seq, functools.partial(_fill, outputs[0]), "a scatter",
                      _target(outputs[0]))
        return pending.work()

    def barrier(self, opts: Any = None) -> Any:
        seq, token = next(self._seq), torch.zeros(1, dtype=torch.uint8)
        for peer in self._peers():
            self._send(peer, self._collective, seq, token)
        pending = _Pending(len(self._peers()), [token])
        for peer in self._peers():
            self._receive(pending, peer, self._collective, seq, lambda payload: None, "a barrier")
        return pending.work()

    def shutdown(self) -> None:
        if self._mesh is _mesh and len(self._global) == self._mesh.world_size:
            close_mesh()


# -- wiring into torch.distributed (the runtime's secure_transport patches) -------------------------------
_mesh: Mesh | None = None
_mesh_lock = threading.Lock()


def active_mesh() -> Mesh | None:
    """The mesh of the session open in this process (tests look at what its rendezvous refused)."""
    return _mesh


def close_mesh() -> None:
    """Close this process's mesh (at the end of a session; safe to call twice)."""
    global _mesh
    with _mesh_lock:
        mesh, _mesh = _mesh, None
    if mesh is not None:
        mesh.close()


def _create_group(options: Any, backend_options: Any = None) -> TlsProcessGroup:
    """torch's backend creator (extended API): the default group joins the mesh, subgroups reuse it."""
    global _mesh
    from mpcformer.mpc import runtime

    config = runtime.active_config()
    ranks = list(options.global_ranks_in_group) or list(range(options.group_size))
    with _mesh_lock:
        if _mesh is None:
            if config is None or not config.credentials_dir:
                raise TransportError("TLS transport needs MPCConfig.credentials_dir (the session's certificates)")
            rank = ranks[options.group_rank]
            creds = load_credentials(config.credentials_dir, rank)
            _mesh = Mesh(rank, len(ranks), os.environ["RENDEZVOUS"], creds, config.timeout_s).connect()
        mesh = _mesh
    return TlsProcessGroup(mesh, str(options.group_id), options.group_rank, options.group_size, ranks)


def backend_plugin(original: Any, config: Any = None) -> Any:
    """The ``mpcformer_tls`` entry of torch's backend registry (``original`` is absent: nothing to wrap)."""
    return dist.Backend._BackendPlugin(_create_group, True)


def init_over_tls(init: Callable, config: Any = None) -> Callable:
    """``dist.init_process_group`` on the TLS backend with a process-local store: the rendezvous is the
    mesh's own (no TCP store, no gloo)."""

    @functools.wraps(init)
    def init_process_group(backend: Any = None, init_method: str | None = None, **kwargs: Any) -> Any:
        kwargs.pop("store", None)
        return init(backend=BACKEND_SPEC, store=dist.HashStore(), **kwargs)

    return init_process_group
