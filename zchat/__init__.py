"""zchat: a terminal chat system on ZeroMQ.

One broker process (a ROUTER socket for requests and replies, a PUB socket for room and
presence events) serves many terminal clients. Users log in with a name and password, join
rooms, talk in them and send each other direct messages, which the broker keeps in SQLite
until the recipient comes online. The wire protocol is described in docs/PROTOCOL.md; the
codec and the broker and client state machines are pure, and the zmq loop, the store and
the console are thin adapters around them.
"""

__version__ = "0.1.0"
