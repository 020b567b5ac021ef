"""Rate limiting: a token bucket and a bounded table of buckets keyed by peer address.

Pure: no clock of its own. Every call takes ``now_s``, monotonic seconds, so the broker
passes its loop's time and tests pass a fake clock (docs/PROTOCOL.md §15).

A bucket holds up to ``burst`` tokens and gains ``rate_per_s`` tokens a second; a request
costs one token. Full, it lets ``burst`` requests through at once, then one every
``1 / rate_per_s`` seconds. This is the token bucket of RFC 2697/2698 (there "committed
burst size" and "committed information rate"), the shape Matrix's ``rc_message`` and
nginx's ``limit_req`` use too.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict

#: Most per-address login buckets the broker keeps (docs/PROTOCOL.md §15). A bucket and
#: its key cost about 250 bytes, so the table stays under about 16 MiB however many
#: distinct addresses knock. At the cap the least recently used bucket is forgotten:
#: that address then starts again from a full bucket, which is exactly what a new
#: address gets anyway, so a flood of addresses gains nothing by it, and nobody is ever
#: locked out because the table is full.
MAX_ADDRESS_BUCKETS = 65_536


class TokenBucket:
    """A token bucket of ``burst`` tokens refilled at ``rate_per_s`` tokens per second,
    full at ``now_s`` (monotonic seconds).

    Raises ValueError when ``rate_per_s`` is not > 0 or ``burst`` is not >= 1 (a limit
    of 0 means "no limit" and is the caller's business: it keeps no bucket at all).
    """

    __slots__ = ("rate_per_s", "burst", "tokens", "stamp_s")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be a finite number > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.tokens = float(burst)
        self.stamp_s = now_s

    def _refill(self, now_s: float) -> float:
        elapsed = now_s - self.stamp_s
        if elapsed > 0:  # a clock that goes backwards adds nothing (and takes nothing)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
            self.stamp_s = now_s
        return self.tokens

    def take(self, now_s: float, cost: int = 1) -> int:
        """Take ``cost`` tokens at ``now_s``. Returns 0 when they were taken (the request
        may go ahead), else the milliseconds until enough tokens will be there (>= 1,
        rounded up) and takes nothing, so that a refused request costs nothing.

        Raises ValueError when ``cost`` is below 1 or above ``burst`` (it could never be
        served)."""
        if not 1 <= cost <= self.burst:
            raise ValueError(f"cost must be 1 to burst ({self.burst}), got {cost}")
        tokens = self._refill(now_s)
        if tokens >= cost:
            self.tokens = tokens - cost
            return 0
        # rounded up, less a nanosecond's float noise (0.2 s elapsed may read 0.19999…)
        return max(1, math.ceil((cost - tokens) / self.rate_per_s * 1000 - 1e-6))

    def wait_ms(self, now_s: float, cost: int = 1) -> int:
        """What ``take`` would answer at ``now_s``, taking nothing: 0 when ``cost``
        tokens are there, else the milliseconds until they will be. For a request
        counted in two buckets, which must take from both or from neither."""
        if not 1 <= cost <= self.burst:
            raise ValueError(f"cost must be 1 to burst ({self.burst}), got {cost}")
        tokens = min(float(self.burst),
                     self.tokens + max(0.0, now_s - self.stamp_s) * self.rate_per_s)
        if tokens >= cost:
            return 0
        return max(1, math.ceil((cost - tokens) / self.rate_per_s * 1000 - 1e-6))

    def full(self, now_s: float) -> bool:
        """Whether the bucket is full at ``now_s``: then it is the same as a new one and
        may be forgotten."""
        return self.tokens + max(0.0, now_s - self.stamp_s) * self.rate_per_s >= self.burst


def address_key(address: str, routing_id: bytes) -> str:
    """The key of a peer's login bucket (docs/PROTOCOL.md §15).

    ``address`` is the peer's IP address as ZeroMQ reports it (``Peer-Address``). An IPv4
    address is its own key; an IPv6 one is keyed by its /64 network, the block one
    subscriber usually holds (RFC 6177), so that hopping between its addresses does not
    reset the limit. Inproc and ipc peers have no address (``""``): they are keyed by
    ``routing_id``, one bucket per connection.
    """
    if not address:
        return "rid:" + routing_id.hex()
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address  # not a bare IP (e.g. a test's tcp://host:port): use it as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


#: The longest address text a trusted proxy may tell (``told_address``): an IPv6 address
#: written in full with an IPv4 tail is 45 characters.
MAX_ADDRESS_CHARS = 45

ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_networks(entries: tuple[str, ...] | list[str]) -> tuple[ProxyNetwork, ...]:
    """The networks of ``[broker] trusted_proxies`` (docs/security.md, "Trusted
    proxies"): each entry an IP address (one host) or a CIDR network (``10.0.0.0/8``,
    ``fd00::/8``). Raises ValueError naming the first entry that is neither, or a
    network with host bits set (``10.0.0.1/8``: a typo for one host or for its network)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or a CIDR network ({exc})") \
                from None
    return tuple(networks)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``address`` as an IP address, an IPv4-mapped IPv6 one as its IPv4 address; a
    ``[...]`` around it and an IPv6 zone (``%eth0``) dropped. Raises ValueError."""
    ip = ipaddress.ip_address(address.strip("[]").partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(address: str, networks: tuple[ProxyNetwork, ...]) -> bool:
    """Whether the peer address ``address`` (``Peer-Address``; "" on inproc/ipc, never
    trusted) lies in one of ``networks`` (``proxy_networks``)."""
    if not address or not networks:
        return False
    try:
        ip = _ip(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def told_address(text: str) -> str:
    """The address a trusted proxy tells for the user it acts for (LOGIN's and
    REGISTER's ``address``, docs/PROTOCOL.md §6.3), in its canonical form
    (``2001:db8::7``; an IPv4-mapped IPv6 one as its IPv4 address). Raises ValueError
    for anything but one bare IPv4 or IPv6 address (a network, a host name, a port)."""
    if len(text) > MAX_ADDRESS_CHARS:
        raise ValueError(f"not an IP address: longer than {MAX_ADDRESS_CHARS} characters")
    if not text or text != text.strip() or "%" in text or "[" in text:
        raise ValueError(f"not an IP address: {text!r}")
    try:
        return str(_ip(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


class BucketTable:
    """Token buckets by key (e.g. peer address), at most ``max_entries`` of them.

    Least recently used first: ``take`` moves its key to the end. Buckets that have
    refilled are dropped from the idle end as new keys arrive (and by ``prune``), since a
    full bucket is no different from a new one; at ``max_entries`` the least recently
    used bucket is dropped even if not full (see MAX_ADDRESS_BUCKETS for why that is safe).
    Memory is therefore bounded by ``max_entries``. Raises ValueError like TokenBucket.
    """

    def __init__(self, rate_per_s: float, burst: int,
                 max_entries: int = MAX_ADDRESS_BUCKETS) -> None:
        TokenBucket(rate_per_s, burst, 0.0)  # validates the parameters
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: str, now_s: float, cost: int = 1) -> int:
        """``TokenBucket.take`` on ``key``'s bucket (a new, full one for a new key)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self.prune(now_s)
            if len(self._buckets) >= self.max_entries:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now_s)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now_s, cost)

    def wait_ms(self, key: str, now_s: float, cost: int = 1) -> int:
        """``TokenBucket.wait_ms`` on ``key``'s bucket (0 for a key with none: a new
        bucket is full). Takes nothing and makes no bucket."""
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.wait_ms(now_s, cost)

    def prune(self, now_s: float) -> int:
        """Drop refilled buckets from the least recently used end, stopping at the first
        one that is not full; returns how many were dropped. Amortised O(1) per key."""
        dropped = 0
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.full(now_s):
                break
            del self._buckets[key]
            dropped += 1
        return dropped


class ByteBudget:
    """A token bucket of bytes that may go into debt (docs/PROTOCOL.md §15.1, reading):
    a request may go ahead while the budget holds any bytes at all (``wait_ms`` 0), and
    is then charged what it really cost (``charge``), which can take the balance below
    zero; the debt is paid back at ``rate_per_s`` before the next one may go. So the cost
    need not be known before the work, and a request bigger than the burst still passes
    once. Full at ``now_s``. Raises ValueError like TokenBucket."""

    __slots__ = ("rate_per_s", "burst", "tokens", "stamp_s")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        TokenBucket(rate_per_s, burst, now_s)  # validates the parameters
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.tokens = float(burst)
        self.stamp_s = now_s

    def _refill(self, now_s: float) -> float:
        elapsed = now_s - self.stamp_s
        if elapsed > 0:
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
            self.stamp_s = now_s
        return self.tokens

    def wait_ms(self, now_s: float) -> int:
        """0 when a request may go ahead at ``now_s``, else the milliseconds until the
        balance is above zero again (>= 1, rounded up)."""
        tokens = self._refill(now_s)
        if tokens > 0:
            return 0
        return max(1, math.ceil((1 - tokens) / self.rate_per_s * 1000 - 1e-6))

    def charge(self, cost: int, now_s: float) -> None:
        """Take ``cost`` (>= 0) from the balance, below zero if need be."""
        self.tokens = self._refill(now_s) - cost


#: Seconds between two log lines of one kind that any peer can cause at will (a reply
#: dropped at a full queue, a message of too many frames): a flood of them must not
#: become a flood of log lines (a tester's anonymous PINGs wrote 58 MB of log in 10 s).
LOG_EVERY_S = 10.0


class ThrottledLog:
    """Logs one kind of event at most once per ``every_s``: the first at once, the ones
    that follow within the interval counted and summed up in the next line."""

    def __init__(self, level: int, what: str, every_s: float = LOG_EVERY_S,
                 logger: logging.Logger | None = None) -> None:
        self.level, self.what, self.every_s = level, what, every_s
        self.log = logger or logging.getLogger("zchat.broker")
        self._next_s = 0.0
        self._held = 0

    def __call__(self, detail: str, now_s: float) -> None:
        """One more event (``detail`` names its peer); logged now, or counted."""
        if now_s < self._next_s:
            self._held += 1
            return
        more = f" (and {self._held} more like it in the last {self.every_s:g} s)" \
            if self._held else ""
        self.log.log(self.level, "%s: %s%s", self.what, detail, more)
        self._held = 0
        self._next_s = now_s + self.every_s
