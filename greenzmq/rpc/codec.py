"""How RPC values travel: msgpack by default, JSON where msgpack is not wanted.

msgpack (``use_bin_type``) keeps ``bytes`` and ``str`` apart, so bytes, str,
ints, floats, bools, None, lists and dicts (any msgpack key type) come back
exactly as sent; a tuple comes back as a list. The JSON codec (orjson) carries
what JSON carries: no bytes, str keys only. A value a codec cannot carry
raises :class:`TypeError` naming the codec. Each request names its codec in
its first frame and the reply comes back in the same one.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack
import orjson

__all__ = ["CODECS", "JSON", "MSGPACK", "Codec", "get_codec"]


class Codec(Protocol):
    """Turns values into one frame and back."""

    #: the name sent in the request's first frame
    name: bytes

    def dumps(self, obj: Any) -> bytes:
        """One frame; :class:`TypeError` for a value this codec cannot carry."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value; :class:`ValueError` for a frame that is not this codec's."""
        ...


class _Msgpack:
    name = b"msgpack"

    def dumps(self, obj: Any) -> bytes:
        try:
            return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"msgpack cannot carry this value: {e}") from None

    def loads(self, data: bytes) -> Any:
        try:
            # strict_map_key=False: int (and bytes) dict keys round-trip too
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several unrelated types for bad data
            raise ValueError(f"not a msgpack value: {e}") from None


class _JSON:
    name = b"json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except TypeError as e:
            raise TypeError(f"JSON cannot carry this value: {e}") from None

    def loads(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"not a JSON value: {e}") from None


MSGPACK: Codec = _Msgpack()
"""The default codec."""

JSON: Codec = _JSON()
"""The fallback codec: JSON types only."""

CODECS: dict[bytes, Codec] = {MSGPACK.name: MSGPACK, JSON.name: JSON}
"""The codecs a service understands, by the name in a request's first frame."""


def get_codec(name: str | bytes | Codec) -> Codec:
    """A codec by name (``"msgpack"``, ``"json"``) or itself; :class:`ValueError` if unknown."""
    if not isinstance(name, (str, bytes)):
        return name
    key = name.encode() if isinstance(name, str) else name
    try:
        return CODECS[key]
    except KeyError:
        raise ValueError(
            f"unknown codec {key.decode(errors='replace')!r} (msgpack or json)"
        ) from None
