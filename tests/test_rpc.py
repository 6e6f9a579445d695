"""RPC over Majordomo (issue 12, section 1; the test client of section 2): greenzmq.rpc.

Real brokers and workers: an in-process MDPBroker and RPCService (greenlets,
through the plugin's ``greenzmq_service``) on free tcp endpoints; launcher
processes and ``greenzmq call`` subprocesses where the behaviour spans
processes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import gevent.subprocess
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenzmq import rpc
from greenzmq.errors import GreenZMQError, RemoteError
from greenzmq.patterns.mdp import MDPBroker

from .helpers import ROOT, green_wait_for
from .rpc_apps import Calculator

Env = tuple[Any, Any, rpc.Client]


@pytest.fixture
def served(greenzmq_service: Any) -> Callable[..., Env]:
    """``served(**broker_or_service_options)``: a broker, a Calculator service, a client."""
    clients: list[rpc.Client] = []

    def start(*, broker: dict[str, Any] | None = None, **options: Any) -> Env:
        b = greenzmq_service(MDPBroker(**(broker or {})))
        ep = b.endpoints["broker"]
        svc = greenzmq_service(rpc.RPCService(Calculator(), endpoint=ep, **options))
        client = rpc.Client("Calculator", ep, timeout=5)
        clients.append(client)
        return b, svc, client

    yield start
    for c in clients:
        c.close()


class TestCalls:
    @pytest.mark.deadline(30)
    def test_attribute_calls_with_keywords(self, served: Callable[..., Env]) -> None:
        """client.add(1, 2) and keyword arguments reach the method through the broker."""
        _, svc, calc = served()
        assert calc.add(1, 2) == 3
        assert calc.add(a="x", b="y") == "xy"
        assert calc.add([1], b=[2]) == [1, 2]
        assert calc.call("add", (2, 3), {}) == 5
        assert svc.service.dispatcher.calls == 4

    @pytest.mark.deadline(30)
    def test_values_round_trip_exactly(self, served: Callable[..., Env]) -> None:
        """bytes, str, ints, floats, None, bools, lists and dicts come back as sent (msgpack)."""
        _, _, calc = served()
        value = {
            "bytes": b"\x00\xff",
            "str": "h\u00e9",
            "int": -(2**63),
            "big": 2**64 - 1,
            "float": 0.1,
            "inf": math.inf,
            "none": None,
            "flags": [True, False],
            1: {b"k": [[], {}]},
        }
        back = calc.echo(value)
        assert back == value
        assert type(back["bytes"]) is bytes and type(back["str"]) is str

    @pytest.mark.deadline(30)
    def test_json_codec(self, served: Callable[..., Env]) -> None:
        """The JSON fallback carries JSON's types; bytes are refused with the codec named."""
        broker, _, _ = served()
        with rpc.Client("Calculator", broker.endpoints["broker"], timeout=5, codec="json") as calc:
            assert calc.echo({"a": [1, 2.5, None, "s"]}) == {"a": [1, 2.5, None, "s"]}
            with pytest.raises(TypeError, match="JSON cannot carry"):
                calc.echo(b"raw")

    @pytest.mark.deadline(30)
    def test_a_value_no_codec_carries(self, served: Callable[..., Env]) -> None:
        """A result msgpack cannot carry comes back as a remote TypeError; the service goes on."""
        _, _, calc = served()
        with pytest.raises(RemoteError.named("TypeError"), match="msgpack cannot carry"):
            calc.opaque()
        with pytest.raises(TypeError, match="msgpack cannot carry"):
            calc.echo(object())  # refused before it is sent
        assert calc.add(1, 1) == 2


class TestErrors:
    @pytest.mark.deadline(30)
    def test_remote_exception(self, served: Callable[..., Env]) -> None:
        """Type name, message and remote traceback; one RemoteError subclass per name."""
        _, _, calc = served()
        with pytest.raises(RemoteError) as info:
            calc.div(1, 0)
        e = info.value
        assert isinstance(e, RemoteError.named("ZeroDivisionError"))
        assert isinstance(e, GreenZMQError)
        assert type(e) is RemoteError.named("ZeroDivisionError")
        assert type(e).__name__ == e.type_name == "ZeroDivisionError"
        assert e.message == "division by zero"
        assert str(e) == "ZeroDivisionError: division by zero"
        assert "in div" in e.remote_traceback and "return a / b" in e.remote_traceback
        assert not isinstance(e, RemoteError.named("ValueError"))

    @pytest.mark.deadline(30)
    def test_a_failing_method_never_kills_the_worker(self, served: Callable[..., Env]) -> None:
        """After errors of every kind the same worker answers the next call."""
        _, svc, calc = served()
        for call in (
            lambda: calc.div(1, 0),
            calc.add,  # TypeError: missing argument
            calc.nothing,
            lambda: calc.call("_private"),
        ):
            with pytest.raises(RemoteError):
                call()
        assert calc.add(2, 2) == 4
        assert svc.service.worker.answered == 5
        assert svc.service.dispatcher.errors == 2

    @pytest.mark.deadline(30)
    def test_unknown_and_private_methods(self, served: Callable[..., Env]) -> None:
        """Only public methods are callable; the error names the method."""
        _, _, calc = served()
        with pytest.raises(RemoteError.named("AttributeError"), match="no method 'nothing'"):
            calc.nothing()
        with pytest.raises(RemoteError.named("AttributeError"), match="'_private'"):
            calc.call("_private")
        with pytest.raises(AttributeError):
            calc._private  # noqa: B018 (a private name is never a remote method)


class TestLocalClient:
    def test_same_semantics_without_sockets(self) -> None:
        """LocalClient calls through the codec: values, errors and streams as a remote caller."""
        calc = rpc.LocalClient(Calculator)
        assert calc.add(1, b=2) == 3
        assert calc.echo((1, 2)) == [1, 2]  # msgpack has no tuples: what a remote caller sees
        with pytest.raises(RemoteError.named("ZeroDivisionError")):
            calc.div(1, 0)
        assert list(calc.count(3)) == [0, 1, 2]

    @settings(max_examples=60, deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False)
            | st.text()
            | st.binary(),
            lambda kids: (
                st.lists(kids) | st.dictionaries(st.text() | st.integers(-(2**63), 2**64 - 1), kids)
            ),
            max_leaves=20,
        )
    )
    def test_round_trip_property(self, value: Any) -> None:
        """Any msgpack-able value of bytes, str, numbers, lists and dicts comes back equal."""
        assert rpc.LocalClient(Calculator).echo(value) == value


def cli(*args: str) -> Any:
    """``python -m greenzmq ARGS`` (green: the test's in-process broker keeps serving)."""
    return gevent.subprocess.run(
        [sys.executable, "-m", "greenzmq", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


class TestProcesses:
    @pytest.mark.deadline(90)
    def test_launcher_and_greenzmq_call(self, greenzmq_service: Any) -> None:
        """``greenzmq tests.rpc_apps:Calculator -w 2 --endpoint broker=...`` serves from two
        processes; ``greenzmq call`` prints the result as JSON (exit 0), a remote error in
        one line (exit 1), refuses a bad argument (exit 2), lists the methods."""
        # both in processes: the fixture's teardown waits for a process without yielding,
        # and an in-process broker would not be there to see the workers leave
        broker = greenzmq_service("greenzmq.services.majordomo:app", process=True)
        ep = broker.endpoints["broker"]
        greenzmq_service(
            "tests.rpc_apps:Calculator", {"broker": ep}, process=True, args=["-w", "2"]
        )
        with rpc.Client("Calculator", ep, timeout=10) as calc:
            pids: set[int] = set()
            green_wait_for(lambda: pids.add(calc.pid()) or len(pids) == 2, 20, "two workers")
        ok = cli("call", "--broker", ep, "Calculator", "add", "1", "b=2")
        assert (ok.returncode, ok.stdout) == (0, "3\n"), ok.stderr
        assert cli("call", "--broker", ep, "Calculator", "echo", '{"a": [1, "x"]}').stdout == (
            '{"a": [1, "x"]}\n'
        )
        assert cli("call", "--broker", ep, "Calculator", "count", "3").stdout == "0\n1\n2\n"
        err = cli("call", "--broker", ep, "Calculator", "div", "1", "0")
        assert err.returncode == 1
        assert err.stderr == "greenzmq call: ZeroDivisionError: division by zero\n"
        bad = cli("call", "--broker", ep, "Calculator", "add", "one")
        assert bad.returncode == 2 and "'one' is not a JSON literal" in bad.stderr
        listed = cli("call", "--broker", ep, "--list", "Calculator")
        assert listed.returncode == 0
        assert "add(a: 'Any', b: 'Any' = 0) -> 'Any'\n    a + b.\n" in listed.stdout
        assert "count(n: 'int | None' = None, fail_at: 'int | None' = None)" in listed.stdout
        assert "[stream]" in listed.stdout and "_private" not in listed.stdout
        gone = cli("call", "--broker", ep, "--timeout", "0.3", "Nobody", "x")
        assert gone.returncode == 1 and "no reply from 'Nobody'" in gone.stderr
