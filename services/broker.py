"""The broker (tutorial case 2): frontend ROUTER bind 5560, backend DEALER bind 5561, kill SUB."""

from __future__ import annotations

from greenzmq import Broker

app = Broker
