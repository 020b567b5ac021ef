"""A TCP forwarder on loopback for the tests that cut a link (issue 16, "the link between
one broker and PostgreSQL is cut"): ``TcpProxy(host, port)`` listens on 127.0.0.1 (a port
the system picks, ``proxy.port``) and forwards each connection to ``host:port``, both ways,
from one thread.

``blackhole()`` cuts the link the way a network does: nothing is forwarded any more in
either direction and nothing is closed: the proxy stops reading its sockets (what the
peers send waits in the kernels' buffers, as unacknowledged segments wait on a cut
network) and stops accepting (a new connection completes its handshake in the kernel's
backlog and then hears nothing). A peer waiting for an answer waits until its own
timeout. ``forward()`` heals it: the bytes held are delivered, in order, as TCP would
retransmit them; a peer that gave up and closed meanwhile is then closed on the other
side too. ``close()`` closes every socket and joins the thread.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

#: Bytes read from one socket at a time.
CHUNK_BYTES = 65_536
#: Seconds a forwarded write may block on a peer that does not read (loopback: never).
SEND_TIMEOUT_S = 5.0


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``host``:``upstream_port``; see the module."""

    def __init__(self, host: str, upstream_port: int) -> None:
        self.upstream = (host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._flowing = True
        self._closed = False
        self._lock = threading.Lock()
        #: Connections accepted, and bytes forwarded (client -> upstream, back): tests.
        self.accepted = 0
        self.forwarded = [0, 0]
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def flowing(self) -> bool:
        return self._flowing

    def blackhole(self) -> None:
        """Stop forwarding, keep every connection open (the module says how)."""
        self._set(False)

    def forward(self) -> None:
        """Forward again, what was held first."""
        self._set(True)

    def _set(self, flowing: bool) -> None:
        with self._lock:
            self._flowing = flowing
        self._wake_w.send(b"x")

    def close(self) -> None:
        """Close every socket and end the thread (within 5 s). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in [*self._peers, self._listener, self._wake_r, self._wake_w]:
            with contextlib.suppress(OSError):
                sock.close()
        self._peers.clear()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    flowing = self._flowing
                watched = [self._wake_r, *((self._listener, *self._peers) if flowing
                                           else ())]
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fileobj)
                for sock in watched:
                    sel.register(sock, selectors.EVENT_READ)
                for key, _ in sel.select():  # no timeout: every change wakes it
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        self._wake_r.recv(CHUNK_BYTES)
                    elif sock is self._listener:
                        self._accept()
                    elif sock in self._peers:
                        self._pump(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=SEND_TIMEOUT_S)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.settimeout(SEND_TIMEOUT_S)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self.accepted += 1

    def _pump(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(CHUNK_BYTES)
            if data:
                peer.sendall(data)
                self.forwarded[0 if peer.getpeername() == self.upstream else 1] += len(data)
                return
        except OSError:
            pass
        for one in (sock, peer):  # end of stream or an error: close both sides
            self._peers.pop(one, None)
            with contextlib.suppress(OSError):
                one.close()
