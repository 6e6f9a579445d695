"""App specs with gunicorn's grammar: ``module:attr``, ``module:factory(args)``, ``module``.

No colon means the attribute ``app``. Factory arguments are Python literals
(``services.killswitch:app(expect=7)``: a Service class is called like a
factory). A factory of a service named
without its parentheses (``services.majordomo:worker``: a function whose
return annotation is a Service class) is refused before it runs, with the
fix (``services.majordomo:worker()``); gunicorn too needs the call spelled
out. Errors are one line and name the bad part; an exception raised by the
app module's own code propagates with its traceback.

:func:`check_app` is the launcher's pre-fork check (the master itself must not
import an app: that imports zmq.green, rule 7). ``python -m greenzmq.launcher.appspec
JSON`` runs it in a short-lived subprocess (used when HUP changes the app or
its endpoints): it prints the service's name and binds as JSON on stdout, or
a one-line ``greenzmq: error: ...`` (exit 2) or the app's own traceback
(exit 1) on stderr.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ..core.endpoints import EndpointMap, endpoint_list
from ..errors import AppImportError

__all__ = ["AppSpec", "load_app", "parse_app_spec"]


@dataclass(frozen=True)
class AppSpec:
    """A parsed app spec."""

    module: str
    attr: str
    call: bool = False
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def _suggest(spec: str) -> str:
    path = spec[:-3] if spec.endswith(".py") else spec
    mod = path.strip("./").replace(os.sep, ".").replace("/", ".")
    return f"{mod}:app"


def parse_app_spec(spec: str) -> AppSpec:
    """Parse without importing anything; AppImportError names the bad part."""
    if not spec or not spec.strip():
        raise AppImportError("empty app spec: expected MODULE:APP, e.g. services.broker:app")
    spec = spec.strip()
    module, sep, attr = spec.partition(":")
    if spec.endswith(".py") or "/" in module or os.sep in module:
        raise AppImportError(
            f"app spec {spec!r} looks like a file path, not a module: "
            f"did you mean {_suggest(module)!r}?"
        )
    if not sep:
        attr = "app"
    if not module or not all(p.isidentifier() for p in module.split(".")):
        raise AppImportError(f"invalid module name {module!r} in app spec {spec!r}")
    try:
        node = ast.parse(attr.strip(), mode="eval").body
    except SyntaxError:
        raise AppImportError(
            f"failed to parse {attr!r} as an attribute name or function call (app spec {spec!r})"
        ) from None
    if isinstance(node, ast.Name):
        return AppSpec(module, node.id, text=spec)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            raise AppImportError(
                f"factory arguments in {attr!r} must be Python literals (app spec {spec!r})"
            ) from None
        if len(kwargs) != len(node.keywords):
            raise AppImportError(f"**kwargs are not allowed in {attr!r} (app spec {spec!r})")
        return AppSpec(module, node.func.id, True, args, kwargs, spec)
    raise AppImportError(
        f"failed to parse {attr!r} as an attribute name or function call (app spec {spec!r})"
    )


def _import(module: str, spec: str) -> Any:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn: apps in the current directory
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        # only "this module (or a parent) does not exist" is ours to reword;
        # a missing import inside the app's own code keeps its traceback
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise AppImportError(f"no module named {e.name!r} (app spec {spec!r})") from None
        raise


def _service_factory_result(obj: Any) -> type | None:
    """The Service class a function is annotated to return, or None.

    Only functions and methods: a class is an app itself, and a plain callable
    without such an annotation (returning None, say) stays a plain callable app.
    """
    import inspect
    import typing

    from ..core.service import Service

    if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
        return None
    try:
        ret = typing.get_type_hints(obj).get("return")
    except Exception:  # an annotation that does not resolve says nothing
        return None
    return ret if isinstance(ret, type) and issubclass(ret, Service) else None


def load_app(spec: str | AppSpec) -> Any:
    """Import and resolve the spec; return the object (factories are called)."""
    parsed = spec if isinstance(spec, AppSpec) else parse_app_spec(spec)
    mod = _import(parsed.module, parsed.text)
    try:
        obj = getattr(mod, parsed.attr)
    except AttributeError:
        raise AppImportError(
            f"failed to find attribute {parsed.attr!r} in {parsed.module!r} "
            f"(app spec {parsed.text!r})"
        ) from None
    if not parsed.call:
        made = _service_factory_result(obj)
        if made is not None:
            raise AppImportError(
                f"{parsed.text!r} is a factory: it returns a Service ({made.__name__}); "
                f"call it: '{parsed.module}:{parsed.attr}()'"
            )
    if parsed.call:
        if not callable(obj):
            raise AppImportError(
                f"{parsed.module}:{parsed.attr} is not callable (app spec {parsed.text!r})"
            )
        try:
            obj = obj(*parsed.args, **parsed.kwargs)
        except TypeError as e:
            raise AppImportError(
                f"calling {parsed.attr} failed: {e} (app spec {parsed.text!r})"
            ) from e
        if obj is None:
            raise AppImportError(
                f"factory {parsed.attr!r} returned None (app spec {parsed.text!r})"
            )
    return obj


def as_service(obj: Any, name: str | None = None) -> Any:
    """Turn a loaded app into a Service: an instance, a Service class, or a plain callable.

    An object with a ``__greenzmq_service__()`` hook says how to serve it (a
    class marked with :func:`greenzmq.rpc.service` does), so the launcher
    need not know its kind.
    """
    from ..core.service import CallableService, Service

    if isinstance(obj, Service):
        return obj
    if isinstance(obj, type) and issubclass(obj, Service):
        return obj()
    hook = getattr(obj, "__greenzmq_service__", None)
    if hook is not None:
        return hook()
    if callable(obj):
        return CallableService(obj, name=name)
    raise AppImportError(f"app {obj!r} is neither a greenzmq Service nor a callable")


def _is_shared_bind(addr: str) -> bool:
    # inproc is per process; tcp and ipc addresses are machine-wide
    return addr.startswith(("tcp://", "ipc://"))


def check_app(spec: str, endpoints: EndpointMap, workers: int = 1) -> dict[str, Any]:
    """Load the app and :func:`describe_service` it."""
    return describe_service(as_service(load_app(spec)), endpoints, workers)


def describe_service(service: Any, endpoints: EndpointMap, workers: int = 1) -> dict[str, Any]:
    """Validate the endpoint overrides for every worker index; the service's name and binds.

    With ``workers`` above 1 a tcp or ipc bind without a per-worker
    placeholder is refused: libzmq has no SO_REUSEPORT, N processes cannot
    bind one address.
    """
    from ..core.sockets import apply_endpoints
    from ..errors import ConfigError
    from .config import expand_endpoints, has_placeholder

    for wid in sorted({0, workers - 1}):
        apply_endpoints(service.specs, {n: expand_endpoints(a, wid) for n, a in endpoints.items()})
    sockets = []
    for s in service.specs:
        given = endpoints.get(s.name)
        raw = [] if given is None else endpoint_list(given)
        binds = list(s.bind) if given is None else (raw if (s.bind or "*" in "".join(raw)) else [])
        for addr in binds:
            if workers > 1 and _is_shared_bind(addr) and not has_placeholder(addr):
                raise ConfigError(
                    f"socket {s.name!r} binds {addr} and {workers} workers cannot bind one "
                    "address (libzmq has no SO_REUSEPORT): use -w 1, connect the workers to "
                    f"a broker, or give a per-worker endpoint, e.g. --endpoint "
                    f"{s.name}=tcp://127.0.0.1:{{5600+wid}}"
                )
        sockets.append({"name": s.name, "bind": binds})
    return {"service": service.name, "sockets": sockets}


def _main(argv: list[str]) -> int:
    import json

    from ..errors import GreenZMQError
    from .protocol import EXIT_CONFIG

    req = json.loads(argv[0])
    try:
        info = check_app(req["app"], req.get("endpoint", {}), int(req.get("workers", 1)))
    except GreenZMQError as e:
        print(f"greenzmq: error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
