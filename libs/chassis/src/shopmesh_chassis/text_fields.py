"""Two rules for every text field of every request: UTF-8, and no NUL character (U+0000).

Protobuf strings are UTF-8, and U+0000 is valid UTF-8, so a client can send it; no shopmesh field means
anything by it (ids, names, addresses, queries), and PostgreSQL cannot store it in `text` at all (SQLite
can), so the same request would be a clean answer on `make run` and INTERNAL on Kubernetes. The chassis
refuses it for every service before any handler runs: INVALID_ARGUMENT with the field paths.

A string that is not UTF-8 makes the whole request unparseable, so the protobuf parser names no field. The
HTTP/JSON transcoder sends such requests (it copies a query parameter's percent-decoded bytes, `?query=caf%E9`
from a Latin-1 form, into the string field as they are), so `invalid_utf8_fields` reads the wire format
itself to name the fields a client can correct.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from shopmesh_chassis.errors import FieldViolation, InvalidArgument

NUL_CHARACTER = "NUL_CHARACTER"
NOT_UTF8 = "NOT_UTF8"
_DESCRIPTION = "must not contain the NUL character (U+0000)"

# Both walks run in Python on the event loop's thread, before authentication, on a body a client sized: a
# 1 MiB gateway request of one-byte strings has ~200,000 of them, and naming each held the loop for seconds
# (every call on the server waited, health checks too) and built a violation and a path for each. So a walk
# stops at the first MAX_NAMED_FIELDS bad fields: a client fixes its request from the first few, and the
# answer lists no more than that anyway (grpc_errors keeps the details under 3.5 KiB, ~30 short violations).
MAX_NAMED_FIELDS = 20
# ...and after MAX_FIELDS_VISITED fields (each value of a repeated one, at any depth), some milliseconds of Python:
# far more than any shopmesh request holds (its lists take at most 100 entries), so a request past it is
# refused by the rule it breaks, its fields past the bound unnamed.
MAX_FIELDS_VISITED = 10_000
# Protobuf's parser refuses messages nested deeper than this (its default recursion limit); the wire-format
# walk stops there too rather than recurse until Python's own limit fails the call as INTERNAL.
_MAX_DEPTH = 100


@dataclass(frozen=True)
class BadTextFields:
    """The paths of the string fields a walk found bad (`items[1].product_id`), at most MAX_NAMED_FIELDS,
    in the order of the request; `cut_short` when a bound stopped the walk, so that fields past it were
    not looked at (and may be bad too)."""

    paths: tuple[str, ...]
    cut_short: bool

    def listed(self) -> str:
        """The paths for an error's message: never more than MAX_NAMED_FIELDS of them."""
        return ", ".join(self.paths) + (", and possibly more" if self.cut_short else "")


class _Bounded:
    """One walk's count of the values it looked at and the bad fields it found; `_Stop` at either bound."""

    def __init__(self) -> None:
        self.visited = 0
        self.found: list[str] = []

    def visit(self) -> None:
        self.visited += 1
        if self.visited > MAX_FIELDS_VISITED:
            raise _Stop

    def bad(self, path: str) -> None:
        self.found.append(path)
        if len(self.found) >= MAX_NAMED_FIELDS:
            raise _Stop


class _Stop(Exception):
    pass


def nul_violation(path: str) -> FieldViolation:
    """The violation for a text field holding U+0000: what a request gets, and what a service checking text
    that does not come in a request (data it loads at startup) reports the same way."""
    return FieldViolation(path, _DESCRIPTION, NUL_CHARACTER)


def check_no_nul(request: Message) -> None:
    """Raise InvalidArgument naming the string fields of `request` (at any depth) that hold U+0000: the first
    MAX_NAMED_FIELDS; past MAX_FIELDS_VISITED values, the request is refused with those found so far (perhaps
    none: its serialized form holds a zero byte, and it has far more fields than any shopmesh request)."""
    # The serialized form holds a zero byte whenever a string does, and usually not otherwise (a zero
    # varint or an empty length-delimited value also makes one): ~1 µs for a typical request, and the
    # field-by-field walk only on a hit.
    if b"\x00" not in request.SerializeToString():
        return
    walk = _Bounded()
    try:
        for path in _nul_paths(request, "", walk):
            walk.bad(path)
    except _Stop:
        found = BadTextFields(tuple(walk.found), cut_short=True)
    else:
        if not walk.found:
            return
        found = BadTextFields(tuple(walk.found), cut_short=False)
    violations = [nul_violation(path) for path in found.paths]
    message = "text fields must not contain NUL characters"
    if found.cut_short:
        message += f" (looked for in the first {MAX_FIELDS_VISITED} fields, until {MAX_NAMED_FIELDS} were found)"
    raise InvalidArgument(message, violations, reason=NUL_CHARACTER)


def _nul_paths(message: Message, prefix: str, walk: _Bounded) -> Iterator[str]:
    """The paths of the string fields holding U+0000, lazily: the caller stops the walk at its bound."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            for index, text in _elements(field, value):
                walk.visit()
                if "\x00" in text:
                    yield _path(prefix, field.name, index)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    walk.visit()
                    if _has_nul(key, item, walk):
                        yield f"{prefix}{field.name}[{key!r}]"
            else:
                for index, item in _elements(field, value):
                    walk.visit()
                    yield from _nul_paths(item, _path(prefix, field.name, index) + ".", walk)


def _elements(field: FieldDescriptor, value: Any) -> Iterator[tuple[int | None, Any]]:
    """A field's values with their index in a repeated field (None for a singular one), lazily."""
    if field.is_repeated:
        yield from enumerate(value)
    else:
        yield None, value


def _path(prefix: str, name: str, index: int | None) -> str:
    return f"{prefix}{name}" if index is None else f"{prefix}{name}[{index}]"


def _has_nul(key: object, item: object, walk: _Bounded) -> bool:
    """Whether a map entry holds U+0000 in its key or value, at any depth (named as the entry, `fields['k']`)."""
    if isinstance(key, str) and "\x00" in key:
        return True
    if isinstance(item, Message):
        return next(_nul_paths(item, "", walk), None) is not None
    return isinstance(item, str) and "\x00" in item


# Protobuf's wire types (https://protobuf.dev/programming-guides/encoding/#structure).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def invalid_utf8_fields(data: bytes, descriptor: Descriptor) -> BadTextFields:
    """The string fields (at any depth) whose bytes in the serialized message `data` are not UTF-8, named as
    `items[1].product_id`: the first MAX_NAMED_FIELDS, looked for in the first MAX_FIELDS_VISITED values.
    None named, and not cut short, when there are none, or when `data` is no well-formed message in other
    ways (a truncated field, a group, an invalid tag, nesting past protobuf's limit), whose fault names no
    field."""
    walk = _Bounded()
    try:
        _invalid_utf8(memoryview(data), descriptor, "", walk, 0)
    except _NotWellFormed:
        return BadTextFields((), cut_short=False)
    except _Stop:
        return BadTextFields(tuple(walk.found), cut_short=True)
    return BadTextFields(tuple(walk.found), cut_short=False)


class _NotWellFormed(Exception):
    pass


def _invalid_utf8(data: memoryview, descriptor: Descriptor, prefix: str, walk: _Bounded, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _NotWellFormed
    seen: dict[int, int] = {}  # occurrences of each repeated field so far: an element's index
    position = 0
    while position < len(data):
        walk.visit()
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            _, position = _varint(data, position)
        elif wire_type in (_I64, _I32):
            position += 8 if wire_type == _I64 else 4
        elif wire_type == _LEN:
            size, position = _varint(data, position)
            value, position = data[position : position + size], position + size
            field = descriptor.fields_by_number.get(number)
            if field is not None:
                index = seen.get(number, 0)
                seen[number] = index + 1
                name = _path(prefix, field.name, index if field.is_repeated else None)
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        str(value, "utf-8")
                    except UnicodeDecodeError:
                        walk.bad(name)
                elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                    # A map's entry is a message of its key and value: `labels[3].key`, the entry by position.
                    _invalid_utf8(value, field.message_type, f"{name}.", walk, depth + 1)
        else:
            raise _NotWellFormed
        if position > len(data):
            raise _NotWellFormed


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise _NotWellFormed
