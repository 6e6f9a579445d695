"""App specs with gunicorn's grammar: ``module:attr``, ``module:factory(args)``, ``module``.

No colon means the attribute ``app``. Factory arguments are Python literals
(``services.killswitch:make(expect=7)``). Errors are one line and name the
bad part; an exception raised by the app module's own code propagates with
its traceback.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import AppImportError

__all__ = ["AppSpec", "parse_app_spec", "load_app"]


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
    if parsed.call:
        if not callable(obj):
            raise AppImportError(f"{parsed.module}:{parsed.attr} is not callable (app spec {parsed.text!r})")
        try:
            obj = obj(*parsed.args, **parsed.kwargs)
        except TypeError as e:
            raise AppImportError(f"calling {parsed.attr} failed: {e} (app spec {parsed.text!r})") from e
        if obj is None:
            raise AppImportError(f"factory {parsed.attr!r} returned None (app spec {parsed.text!r})")
    return obj


def as_service(obj: Any, name: str | None = None) -> Any:
    """Turn a loaded app into a Service: an instance, a Service class, or a plain callable."""
    from .service import CallableService, Service

    if isinstance(obj, Service):
        return obj
    if isinstance(obj, type) and issubclass(obj, Service):
        return obj()
    if callable(obj):
        return CallableService(obj, name=name)
    raise AppImportError(f"app {obj!r} is neither a greenzmq Service nor a callable")
