"""The key service's wire: just enough of ZMTP 3.0 (RFC 23/ZMTP, NULL mechanism) to answer
a DEALER's single-frame ``KEY`` request, read from a raw ZMQ_STREAM socket.

Why not a ROUTER (docs/PROTOCOL.md §16.3): libzmq caps the size of a frame
(``MAXMSGSIZE``) but not the number of frames in a message, and it hands a multipart
message to the application only once the message is complete. A peer could therefore make
a ROUTER hold any number of empty frames (2 bytes each on the wire, ~100 bytes each in
libzmq, and as many Python objects as the reader made), with no account and no
encryption: 6,000,000 of them held the broker's loop for 37 s at 1.6 GB (docs/
PERFORMANCE.md, item 15). Here the broker sees the bytes as they come, a few KiB at a
time, and closes the connection at the first byte that is not part of a KEY request: a
frame flagged MORE, a long frame or command, a frame over ``KEY_SERVICE_MAX_FRAME_BYTES``,
a greeting that is not ZMTP 3 with NULL. Each connection then costs the broker at most
one read of libzmq's (8 KiB) and ``MAX_PEER_BUFFER_BYTES`` of its own.

Pure, in the sans-I/O shape (h11): ``KeyPeer.receive(data)`` takes the bytes read and
returns the requests found and whether to close; ``GREETING`` is what to send on connect
and ``encode_message(frames)`` the bytes of a reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Our greeting (RFC 23 §"Greeting"): signature (0xFF, 8 bytes of padding, 0x7F; the
#: padding as libzmq writes it), version 3.0, mechanism NULL, as-server 0, filler.
_SIGNATURE = b"\xff" + b"\x00" * 7 + b"\x01\x7f"
GREETING_BYTES = 64
_SERVER_GREETING = (_SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00"
                    + b"\x00" * 31)
#: Our READY command: we are a ROUTER (the peer, a DEALER, checks the pairing).
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"ROUTER"
READY = b"\x04" + bytes([len(_READY_BODY)]) + _READY_BODY
#: What the broker sends a new connection at once: greeting and READY.
GREETING = _SERVER_GREETING + READY

#: Flag bits of a ZMTP 3 frame or command (RFC 23 §"Framing").
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
#: Most bytes a peer may leave unparsed with us: a greeting, or a short command or frame
#: (flags, size, at most 255 bytes). Anything more would be a long frame or command,
#: which a KEY request never is.
MAX_PEER_BUFFER_BYTES = GREETING_BYTES + 2 + 255
#: Most requests taken from one read: an honest client sends one per connection; the
#: rest of a read that holds more is not looked at and the connection is closed.
MAX_REQUESTS_PER_READ = 128


def encode_message(frames: list[bytes]) -> bytes:
    """The wire bytes of one ZMTP message of short frames (each under 256 bytes)."""
    out = bytearray()
    for i, frame in enumerate(frames):
        out += bytes([_MORE if i < len(frames) - 1 else 0, len(frame)]) + frame
    return bytes(out)


@dataclass(slots=True)
class KeyPeer:
    """One connection to the key service: its unparsed bytes and how far it got."""

    max_frame_bytes: int
    handshaken: bool = False
    ready: bool = False
    buffer: bytearray = field(default_factory=bytearray)

    def receive(self, data: bytes) -> tuple[list[bytes], str]:
        """Take the bytes of one read; returns the single-frame messages completed by it
        (their bodies, in order) and "" to go on, or a reason to close the connection
        now (a peer that broke a rule gets nothing more, not even the requests before
        the break)."""
        buf = self.buffer
        buf += data
        requests: list[bytes] = []
        pos = 0
        if not self.handshaken:
            if len(buf) < GREETING_BYTES:
                return self._keep(buf, pos, requests, bytes(buf[:1]) in (b"", b"\xff"))
            if buf[0] != 0xFF or not buf[9] & 0x01 or buf[10] < 3 \
                    or bytes(buf[12:32]).rstrip(b"\x00") != b"NULL":
                return [], "not a ZMTP 3 NULL greeting"
            self.handshaken, pos = True, GREETING_BYTES
        while len(buf) - pos >= 2:
            flags, size = buf[pos], buf[pos + 1]
            if flags & _LONG or flags & ~(_MORE | _LONG | _COMMAND):
                return [], "a long frame or command, or unknown flags"
            if len(buf) - pos - 2 < size:
                break
            body = bytes(buf[pos + 2:pos + 2 + size])
            pos += 2 + size
            if flags & _COMMAND:
                if not self.ready and not body.startswith(b"\x05READY"):
                    return [], "no READY command"
                self.ready = True  # later commands (PING) are ignored
                continue
            if not self.ready:
                return [], "a message before READY"
            if flags & _MORE:
                return [], "a message of more than one frame"
            if size > self.max_frame_bytes:
                return [], f"a frame over {self.max_frame_bytes} bytes"
            requests.append(body)
            if len(requests) > MAX_REQUESTS_PER_READ:
                return [], f"more than {MAX_REQUESTS_PER_READ} requests in one read"
        return self._keep(buf, pos, requests, True)

    def _keep(self, buf: bytearray, pos: int, requests: list[bytes],
              plausible: bool) -> tuple[list[bytes], str]:
        del buf[:pos]
        if not plausible:
            return [], "not a ZMTP 3 NULL greeting"
        if len(buf) > MAX_PEER_BUFFER_BYTES:
            return [], "too many bytes without a request"
        return requests, ""
