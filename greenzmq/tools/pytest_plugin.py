"""greenzmq's pytest plugin: run the services you test, on free endpoints, and check their hops.

Registered through the ``pytest11`` entry point, so ``pip install greenzmq`` is all
a project needs; the fixtures:

* ``zmq_endpoint()``: a free endpoint, ``tcp://127.0.0.1:PORT`` (or
  ``zmq_endpoint("ipc")``: a socket file in a fresh temporary directory).
* ``greenzmq_service(app, endpoints=None, *, process=False, args=())``: start
  an app (a ``MODULE:APP`` spec, a :class:`~greenzmq.core.service.Service`
  instance or class) in this process, in a greenlet, or with ``process=True``
  as a real launcher (``python -m greenzmq``) in its own process group. Every
  socket that binds and the kill switch get free endpoints unless given. It
  returns once the service is ready: in-process, when its sockets exist and
  ``setup`` returned (the service's ready callback); a launcher, when its
  master says ``READY=1`` over ``NOTIFY_SOCKET`` (sd_notify: every worker has
  booted). At teardown every service is stopped (SIGTERM for a launcher) and
  the test fails if one did not exit 0.
* ``greenzmq_rpc(target, broker=None, *, timeout=10.0, codec="msgpack",
  window=64)``: an RPC test client (:mod:`greenzmq.rpc`). ``target`` an
  object or a class: its methods are called in this process, through the
  codec and the service's dispatcher (:class:`~greenzmq.rpc.LocalClient`:
  values, errors and streams as a remote caller sees them, no sockets);
  ``target`` a service name and ``broker`` an endpoint (or the
  ``greenzmq_service`` of a broker): through that broker
  (:class:`~greenzmq.rpc.Client`). Closed at teardown.
* ``greenzmq_hops``: the hop events of the services the fixtures started
  (in-process ones log JSON to a file of the test's), with ``path(key)``:
  the ``(service, socket, op)`` a message and its reply took, in order.

Everything is cleaned up when the test fails too. The plugin imports gevent
and zmq only when a fixture is used.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Hops", "RunningService"]

_KILL = "kill"


def _free_tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class _Endpoints:
    """Free endpoints; ipc ones in one short temporary directory (paths are <= 107 bytes)."""

    def __init__(self) -> None:
        self._dir: str | None = None
        self._n = itertools.count()

    def __call__(self, transport: str = "tcp") -> str:
        if transport == "tcp":
            return _free_tcp()
        if transport == "ipc":
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="gzmq-")
            return f"ipc://{self._dir}/{next(self._n)}"
        raise ValueError(f"zmq_endpoint: unknown transport {transport!r} (tcp or ipc)")

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _read_events(path: Path) -> list[dict[str, Any]]:
    import orjson

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines():
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a half-written last line
        if isinstance(ev, dict):
            out.append(ev)
    return out


def _matches(ev: dict[str, Any], event: str | None, match: Mapping[str, Any]) -> bool:
    return (event is None or ev.get("event") == event) and all(
        ev.get(k) == v for k, v in match.items()
    )


class RunningService:
    """A service started by ``greenzmq_service``: its endpoints, logs, and how to stop it."""

    def __init__(self, name: str, endpoints: dict[str, str], log: Path | None) -> None:
        #: socket name -> the address it was given (free ones filled in)
        self.endpoints = endpoints
        self.name = name
        #: the JSON log (a launcher's; in-process services log to ``greenzmq_hops``'s file)
        self.log = log
        self.exit_code: int | None = None

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The service's logged events so far, optionally only ``event`` with fields ``match``."""
        if self.log is None:
            return []
        return [e for e in _read_events(self.log) if _matches(e, event, match)]

    def wait_ready(self, timeout: float) -> None:
        """Return once the service is ready; RuntimeError if it ended, TimeoutError."""
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> int:
        """Stop it (gracefully) and wait; its exit code."""
        raise NotImplementedError

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for it to end by itself (a kill switch, a crash); its exit code."""
        raise NotImplementedError

    def kill_switch(self) -> None:
        """Publish on the service's kill endpoint once a subscriber is there (a test of it)."""
        import zmq
        import zmq.green as gzmq

        ctx: Any = gzmq.Context.instance()  # green: an in-process service keeps running
        pub = ctx.socket(zmq.XPUB)
        try:
            pub.bind(self.endpoints[_KILL])
            if pub.poll(10_000):  # the service's SUB joining
                pub.recv()
            pub.send(b"stop")
        finally:
            pub.close(linger=1000)


class _GreenService(RunningService):
    def __init__(self, svc: Any, endpoints: dict[str, str], log: Path | None) -> None:
        import gevent
        import gevent.event

        super().__init__(svc.name, endpoints, log)
        #: the Service object itself
        self.service = svc
        ready = gevent.event.Event()
        svc.add_ready_callback(lambda _s: ready.set())
        self._greenlet = gevent.spawn(svc.serve, endpoints, install_signals=False)
        self._ready = ready

    def wait_ready(self, timeout: float) -> None:
        import gevent

        gevent.wait([self._ready, self._greenlet], timeout=timeout, count=1)  # type: ignore[type-var]
        if self._ready.is_set():
            return
        if self._greenlet.dead:
            err = self._greenlet.exception
            raise RuntimeError(
                f"service {self.name!r} ended before it was ready: {err!r}"
                if err
                else f"exit code {self._greenlet.value}"
            )
        raise TimeoutError(f"service {self.name!r} not ready within {timeout} s")

    def stop(self, timeout: float = 15.0) -> int:
        """Ask the service to stop and wait for ``serve`` to return; its exit code."""
        if self.exit_code is None and not self._greenlet.dead:
            self.service.stop("test over")
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for ``serve`` to return by itself; its exit code."""
        if self.exit_code is None:
            self.exit_code = int(self._greenlet.get(timeout=timeout))
        return self.exit_code


class _ProcessService(RunningService):
    def __init__(
        self, spec: str, endpoints: dict[str, str], args: Sequence[str], log: Path, cwd: str
    ) -> None:
        super().__init__(spec, endpoints, log)
        self._dir = tempfile.mkdtemp(prefix="gzmq-notify-")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(os.path.join(self._dir, "notify"))
        argv = [sys.executable, "-m", "greenzmq", spec]
        for name, addr in endpoints.items():
            argv += ["--endpoint", f"{name}={addr}"]
        argv += [*args, "--log-format", "json", "--log-file", str(log)]
        env = {**os.environ, "NOTIFY_SOCKET": os.path.join(self._dir, "notify")}
        self.output_path = log.with_suffix(".out")
        with open(self.output_path, "wb") as out:
            #: the launcher's process (the master)
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self.proc.pid

    def output(self) -> str:
        """What the launcher printed (its errors, a worker's traceback)."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Wait for the master's ``READY=1``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"greenzmq {self.name} exited with {self.proc.returncode} before it was "
                    f"ready:\n{self.output()}"
                )
            if left <= 0:
                raise TimeoutError(f"greenzmq {self.name} not ready within {timeout} s")
            r, _, _ = select.select([self._notify], [], [], min(left, 0.2))
            if r and b"READY=1" in self._notify.recv(4096).split(b"\n"):
                return

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the launcher to exit by itself; its exit code."""
        if self.exit_code is None:
            self.proc.wait(timeout)
        return self.stop()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the launcher's process group and wait; its exit code (SIGKILL past timeout)."""
        if self.exit_code is None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.exit_code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.exit_code = -signal.SIGKILL
            self._notify.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        return self.exit_code


class Hops:
    """Hop events of the services the fixtures started (see the module docstring)."""

    def __init__(self, own_log: Path) -> None:
        self.own_log = own_log  # in-process services
        self.sources: list[Path] = [own_log]

    def events(self, **match: Any) -> list[dict[str, Any]]:
        """Every hop event so far (``op=...``, ``service=...``, ``key=...`` to filter)."""
        out = []
        for src in self.sources:
            out += [e for e in _read_events(src) if _matches(e, "hop", match)]
        return sorted(out, key=lambda e: float(e.get("timestamp", 0.0)))

    def path(self, key: str | Sequence[bytes]) -> list[tuple[str, str, str]]:
        """``(service, socket, op)`` of each hop a message and its reply took, in order.

        ``key``: the message's hop key, or its body frames. [] if no path has it.
        """
        from ..core.tracing import message_key
        from .trace import build_paths, load_hops

        k = key if isinstance(key, str) else message_key(list(key))
        hops, _ = load_hops([str(s) for s in self.sources if s.exists()])
        for p in build_paths(hops):
            if k in p.keys:
                return [(h.service, h.socket, h.op) for h in p.hops]
        return []

    def wait(self, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first hop event matching ``match``, waiting for it (green, with a deadline)."""
        import gevent

        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            found = self.events(**match)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no hop {match} within {timeout} s")
            gevent.sleep(delay)
            delay = min(delay * 2, 0.05)


def _fill_endpoints(svc: Any, given: Mapping[str, str], free: _Endpoints) -> dict[str, str]:
    """The given endpoints, plus a free one for every binding socket and the kill switch."""
    out = dict(given)
    for spec in svc.specs:
        if spec.name not in out and (spec.bind or spec.name == _KILL):
            out[spec.name] = free()
    return out


@pytest.fixture
def zmq_endpoint() -> Iterator[Callable[..., str]]:
    """A factory of free endpoints: ``zmq_endpoint()`` (tcp) or ``zmq_endpoint("ipc")``."""
    free = _Endpoints()
    yield free
    free.cleanup()


@pytest.fixture
def greenzmq_hops(tmp_path: Path) -> Hops:
    """Hop events (JSON, every hop) of the services started by ``greenzmq_service``."""
    from ..core.tracing import configure_logging

    log = tmp_path / "greenzmq-hops.log"
    configure_logging("test", fmt="json", log_file=str(log), trace_sample=1.0)
    return Hops(log)


@pytest.fixture
def greenzmq_rpc() -> Iterator[Callable[..., Any]]:
    """An RPC test client, direct or through a broker (see the module docstring)."""
    clients: list[Any] = []

    def connect(
        target: Any,
        broker: str | RunningService | None = None,
        *,
        timeout: float = 10.0,
        codec: str = "msgpack",
        window: int = 64,
    ) -> Any:
        from .. import rpc

        client: Any
        if broker is None:
            if isinstance(target, str):
                raise TypeError("greenzmq_rpc(SERVICE_NAME) needs broker=ENDPOINT")
            client = rpc.LocalClient(target, codec=codec, window=window)
        else:
            if not isinstance(target, str):
                raise TypeError("greenzmq_rpc(..., broker=...) takes the service's name")
            ep = broker.endpoints["broker"] if isinstance(broker, RunningService) else broker
            client = rpc.Client(target, ep, timeout=timeout, codec=codec, window=window)
        clients.append(client)
        return client

    yield connect
    for c in clients:
        c.close()


@pytest.fixture
def greenzmq_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningService]]:
    """Start services for the test; each is stopped at teardown and must exit 0.

    ``greenzmq_service(app, endpoints=None, *, process=False, args=(), timeout=15.0)``;
    see the module docstring.
    """
    free = _Endpoints()
    started: list[RunningService] = []
    n = itertools.count()
    hops: Hops | None = None
    if "greenzmq_hops" in request.fixturenames:
        hops = request.getfixturevalue("greenzmq_hops")

    def start(
        app: Any,
        endpoints: Mapping[str, str] | None = None,
        *,
        process: bool = False,
        args: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> RunningService:
        from ..launcher.appspec import as_service, load_app

        given = dict(endpoints or {})
        running: RunningService
        if process:
            if not isinstance(app, str):
                raise TypeError("greenzmq_service(process=True) takes a 'MODULE:APP' spec")
            filled = _fill_endpoints(as_service(load_app(app)), given, free)
            log = tmp_path / f"greenzmq-service{next(n)}.log"
            running = _ProcessService(app, filled, args, log, cwd=str(request.config.rootpath))
            if hops is not None:
                hops.sources.append(log)
        else:
            svc = as_service(load_app(app) if isinstance(app, str) else app)
            filled = _fill_endpoints(svc, given, free)
            running = _GreenService(svc, filled, hops.own_log if hops else None)
        try:
            running.wait_ready(timeout)
        except BaseException:
            # the test sees this error: no second failure at teardown for it
            try:
                running.stop()
            except Exception:
                pass
            raise
        started.append(running)
        return running

    yield start
    failed = []
    for s in reversed(started):  # the last started first: clients before their brokers
        try:
            code = s.stop()
        except Exception as e:  # every service is stopped first, then the test fails
            failed.append(f"{s.name}: {e!r}")
            continue
        if code != 0:
            failed.append(f"{s.name}: exit code {code}")
    free.cleanup()
    if failed:
        pytest.fail("services did not stop cleanly: " + "; ".join(failed), pytrace=False)
