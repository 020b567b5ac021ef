"""The key service's logic (docs/PROTOCOL.md §16.3), broker-side and pure: the reply to
one request and the per-address rate limit. Its wire (just enough ZMTP) is
zchat.broker.zmtp; the client's side (fetching and pinning the key) is zchat.client.trust.
"""

from __future__ import annotations

from zchat.keyformat import KEY_REPLY, KEY_REQUEST
from zchat.ratelimit import MAX_ADDRESS_BUCKETS, BucketTable, address_key


def key_service_reply(frames: list[bytes], public: bytes) -> list[bytes] | None:
    """The key service's answer to one request received on its ROUTER (``frames`` =
    [routing id, request]), or None to ignore it (anything but ``KEY``). Pure."""
    if len(frames) != 2 or frames[1] != KEY_REQUEST:
        return None
    return [frames[0], KEY_REPLY, b"curve", public]


class KeyService:
    """The key service's logic (docs/PROTOCOL.md §16.3), pure: the broker's loop hands it
    each request with the peer's address and the time, and sends what it returns.

    ``public`` is the broker's Z85 public key. Every request, ``KEY`` or junk, first takes
    a token from its peer's bucket (``rate_per_s`` a second after a burst of ``burst``;
    keyed by ``zchat.ratelimit.address_key`` as the LOGIN limit is, §15.1), so that a
    flood from one address costs the broker's loop next to nothing: a request over the
    limit is **dropped, not answered** (an answer would be work and traffic for the
    flooder; a real client's fetch just times out and says the key service did not
    answer). ``rate_per_s`` 0 turns the limit off. At most ``max_entries`` buckets
    (``zchat.ratelimit.MAX_ADDRESS_BUCKETS``). ``dropped`` counts the dropped requests.
    Raises ValueError for a rate that is neither 0 nor > 0, or a burst below 1.
    """

    def __init__(self, public: bytes, rate_per_s: float, burst: int,
                 max_entries: int = MAX_ADDRESS_BUCKETS) -> None:
        self.public = public
        self.dropped = 0
        self._buckets = BucketTable(rate_per_s, burst, max_entries) if rate_per_s else None

    def reply(self, frames: list[bytes], address: str, now_s: float) -> list[bytes] | None:
        """The frames to send back for one request (``frames`` = [routing id, request]
        as the ROUTER gave them; ``address`` its Peer-Address, "" on inproc/ipc;
        ``now_s`` monotonic seconds), or None to send nothing: over the rate limit, or
        anything but ``KEY``."""
        if self._buckets is not None and frames \
                and self._buckets.take(address_key(address, frames[0]), now_s):
            self.dropped += 1
            return None
        return key_service_reply(frames, self.public)
