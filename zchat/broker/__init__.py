"""The broker's I/O around the pure core (zchat.core): the ``zmq.Poller`` loop and its
ROUTER (``loop``: ``Broker``, ``BrokerThread``), the PUB's thread (``publisher``) and its
judge of subscriptions (``subscriptions``), connection limits and bytes held per
connection (``connections``, ``conntrack``), the ZAP handler (``zap``) and the key service
(``key_service``, on just enough ZMTP: ``zmtp``). docs/design.md, "Architecture".

Import what you need from its module: ``from zchat.broker.loop import Broker``.
"""
