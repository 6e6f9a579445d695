"""The one non-blocking send (and receive) every router of the patterns uses.

The hot path calls the compiled socket methods with plain int flags: pyzmq's
Python-level send/recv_multipart (type checks, IntFlag arithmetic, RCVMORE via
the sugar layer) cost about 2x the libzmq calls themselves (benchmarks/).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _CSocket

# the receiving side is core's (one copy): a whole message as bytes, NOBLOCK
from ..core.mux import _recv_raw as recv_bytes

__all__ = ["FULL", "GONE", "SENT", "recv_bytes", "send"]

_send = _CSocket.send
_NB, _NB_MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_EHOSTUNREACH = zmq.EHOSTUNREACH
_Again, _ZMQError = zmq.Again, zmq.ZMQError

SENT, FULL, GONE = 0, 1, 2
"""What a non-blocking send did: sent; the peer (or every peer) is full; no such peer."""


def send(raw: Any, m: Sequence[Any]) -> int:
    """Send multipart ``m`` on the raw (non-green) socket ``raw``: SENT, FULL or GONE.

    FULL is EAGAIN (HWM reached, or a DEALER with no peer); GONE is
    EHOSTUNREACH (a ROUTER with ROUTER_MANDATORY and no such peer, rule 8).
    Any other error is a bug and is raised.
    """
    try:
        # EAGAIN and EHOSTUNREACH come on the first frame; once it is taken
        # libzmq accepts the rest of the message.
        for f in m[:-1]:
            _send(raw, f, _NB_MORE, False)
        _send(raw, m[-1], _NB, False)
    except _Again:
        return FULL
    except _ZMQError as e:
        if e.errno != _EHOSTUNREACH:
            raise
        return GONE
    return SENT
