"""The master<->worker line protocol: what the worker writes is what the master reads."""

from __future__ import annotations

from greenzmq.launcher import protocol
from greenzmq.launcher.protocol import LineReader, Message


class TestLines:
    def test_every_kind_round_trips(self) -> None:
        """Each encoder's line parses back to its kind and argument."""
        lines = [
            (protocol.beat(), Message("beat")),
            (
                protocol.checked({"service": "s", "sockets": []}),
                Message("checked", {"service": "s", "sockets": []}),
            ),
            (protocol.ready(), Message("ready")),
            (
                protocol.fail({"code": 2, "message": "no"}),
                Message("fail", {"code": 2, "message": "no"}),
            ),
            (protocol.recycle(), Message("exit", "recycle")),
            (protocol.done("kill switch"), Message("exit", "done kill switch")),
        ]
        reader = LineReader()
        assert list(reader.feed(b"".join(raw for raw, _ in lines))) == [m for _, m in lines]

    def test_a_line_split_across_reads(self) -> None:
        """A line cut anywhere is parsed once it is complete."""
        raw = protocol.fail({"code": 3, "traceback": "Traceback ...\n  boom"}) + protocol.ready()
        for cut in range(1, len(raw)):
            reader = LineReader()
            got = [*reader.feed(raw[:cut]), *reader.feed(raw[cut:])]
            assert [m.kind for m in got] == ["fail", "ready"], cut
            assert got[0].arg["traceback"].endswith("boom")

    def test_what_is_not_a_message(self) -> None:
        """Unknown lines, and argument kinds without their argument, are no message."""
        assert protocol.parse("hello there") is None
        assert protocol.parse("exit") is None
        assert protocol.parse("ready now") is None
        assert protocol.parse("fail not json") == Message("fail", {"message": "not json"})

    def test_exit_reasons(self) -> None:
        """recycle and done are told apart as the master needs."""
        recycle = protocol.parse(protocol.recycle().decode().strip())
        done = protocol.parse(protocol.done(None).decode().strip())
        assert recycle is not None and done is not None
        assert protocol.is_recycle(recycle.arg) and not protocol.is_done(recycle.arg)
        assert protocol.is_done(done.arg) and not protocol.is_recycle(done.arg)
        assert not protocol.is_done(None) and not protocol.is_recycle(None)


class TestRequest:
    def test_round_trip(self) -> None:
        """The first worker reads back the command line, its index and its descriptor."""
        req = protocol.encode_request(["-w", "2", "m:app"], 0, 7)
        assert protocol.decode_request(req) == (["-w", "2", "m:app"], 0, 7)


class TestHeartbeat:
    def test_interval(self) -> None:
        """A quarter of the timeout, within [0.05, 1]; 1 s without a timeout."""
        assert protocol.heartbeat_interval(2) == 0.5
        assert protocol.heartbeat_interval(100) == 1.0
        assert protocol.heartbeat_interval(0.1) == 0.05
        assert protocol.heartbeat_interval(0) == 1.0
