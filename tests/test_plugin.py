"""greenzmq's pytest plugin (greenzmq/tools/pytest_plugin.py), used as a user would."""

from __future__ import annotations

from typing import Any

import pytest

from greenzmq.patterns.lazypirate import LazyPirate

pytest_plugins = ["pytester"]


class TestFixtures:
    @pytest.mark.deadline(60)
    def test_broker_and_worker_in_process(
        self, greenzmq_service: Any, greenzmq_hops: Any, zmq_endpoint: Any
    ) -> None:
        """Free endpoints filled in, ready when returned, the hops of a request in order."""
        broker = greenzmq_service("services.broker:app")
        assert set(broker.endpoints) == {"frontend", "backend", "kill"}
        assert all(a.startswith("tcp://127.0.0.1:") for a in broker.endpoints.values())
        greenzmq_service("services.worker:app", {"backend": broker.endpoints["backend"]})
        with LazyPirate(broker.endpoints["frontend"], timeout=5, retries=1) as c:
            assert c.request(b"7") == [b"49"]
        greenzmq_hops.wait(op="recv", service="test")  # the client's (this process's) last hop
        assert greenzmq_hops.path([b"7"]) == [
            ("test", "lazypirate", "send"),
            ("broker", "frontend", "forward"),
            ("worker", "backend", "recv"),
            ("worker", "backend", "send"),
            ("broker", "backend", "forward"),
            ("test", "lazypirate", "recv"),
        ]
        assert zmq_endpoint("ipc").startswith("ipc:///")

    @pytest.mark.deadline(60)
    def test_kill_switch(self, greenzmq_service: Any) -> None:
        """Each service has its own kill endpoint: the switch stops this one, exit 0."""
        w = greenzmq_service("services.worker:app")
        w.kill_switch()
        assert w.wait(10) == 0
        assert w.service.stop_reason == "kill switch"


PLUGIN_USER = """
import pytest
from greenzmq.patterns.lazypirate import LazyPirate

def test_served(greenzmq_service):
    broker = greenzmq_service("greenzmq.services.broker:app")
    greenzmq_service("greenzmq.services.worker:app", {"backend": broker.endpoints["backend"]})
    with LazyPirate(broker.endpoints["frontend"], timeout=5, retries=1) as c:
        assert c.request(b"3") == [b"9"]

def test_not_ready(greenzmq_service):
    with pytest.raises(Exception, match="already in use|Address"):
        a = greenzmq_service("greenzmq.services.broker:app")
        greenzmq_service("greenzmq.services.broker:app", {"frontend": a.endpoints["frontend"]})

def test_unclean_exit(greenzmq_service):
    from greenzmq.core.service import Service

    class Boom(Service):
        name = "boom"
        def run(self):
            self.stopping.wait()
            raise RuntimeError("boom at stop")

    greenzmq_service(Boom)
"""


@pytest.mark.slow
class TestAsAUser:
    @pytest.mark.deadline(120)
    def test_installed_plugin_in_a_user_project(self, pytester: pytest.Pytester) -> None:
        """A project with no conftest gets the fixtures from the installed package (pytest11);
        a service that does not exit cleanly fails its test at teardown."""
        pytester.makepyfile(test_user=PLUGIN_USER)
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
        res.assert_outcomes(passed=3, errors=1)  # test_unclean_exit passes, then its teardown fails
        res.stdout.fnmatch_lines(["*services did not stop cleanly: boom: exit code 1*"])
