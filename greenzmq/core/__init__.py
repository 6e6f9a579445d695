"""The green runtime.

Owned sockets, the poller, many sockets into one loop, the service lifecycle,
hop tracing, live counters, connection events and CURVE.

Nothing here is imported by this file: the launcher imports ``greenzmq.core.endpoints``
(stdlib only) in a master that must never import zmq or gevent (rule 7).
"""
