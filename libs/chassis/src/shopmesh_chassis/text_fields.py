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

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from shopmesh_chassis.errors import FieldViolation, InvalidArgument

NUL_CHARACTER = "NUL_CHARACTER"
NOT_UTF8 = "NOT_UTF8"
_DESCRIPTION = "must not contain the NUL character (U+0000)"


def check_no_nul(request: Message) -> None:
    """Raise InvalidArgument naming every string field of `request` (at any depth) that holds U+0000."""
    # The serialized form holds a zero byte whenever a string does, and usually not otherwise (a zero
    # varint or an empty length-delimited value also makes one): ~1 µs for a typical request, and the
    # field-by-field walk only on a hit.
    if b"\x00" not in request.SerializeToString():
        return
    violations = [FieldViolation(path, _DESCRIPTION, NUL_CHARACTER) for path in _paths_with_nul(request, "")]
    if violations:
        raise InvalidArgument("text fields must not contain NUL characters", violations, reason=NUL_CHARACTER)


def _paths_with_nul(message: Message, prefix: str) -> list[str]:
    found: list[str] = []
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            values = list(enumerate(value)) if field.is_repeated else [(None, value)]
            found += [_path(prefix, field.name, i) for i, text in values if "\x00" in text]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                found += [f"{prefix}{field.name}[{key!r}]" for key, item in value.items() if _has_nul(key, item)]
            elif field.is_repeated:
                for i, item in enumerate(value):
                    found += _paths_with_nul(item, _path(prefix, field.name, i) + ".")
            else:
                found += _paths_with_nul(value, f"{prefix}{field.name}.")
    return found


def _path(prefix: str, name: str, index: int | None) -> str:
    return f"{prefix}{name}" if index is None else f"{prefix}{name}[{index}]"


def _has_nul(key: object, item: object) -> bool:
    if isinstance(item, Message):
        return (isinstance(key, str) and "\x00" in key) or bool(_paths_with_nul(item, ""))
    return any(isinstance(v, str) and "\x00" in v for v in (key, item))


# Protobuf's wire types (https://protobuf.dev/programming-guides/encoding/#structure).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def invalid_utf8_fields(data: bytes, descriptor: Descriptor) -> list[str]:
    """The paths of the string fields (at any depth) whose bytes in the serialized message `data` are not
    UTF-8, as `items[1].product_id`; empty when there are none, or when `data` is no well-formed message
    in other ways (a truncated field, a group, an invalid tag), whose fault names no field."""
    try:
        return _invalid_utf8(memoryview(data), descriptor, "")
    except _NotWellFormed:
        return []


class _NotWellFormed(Exception):
    pass


def _invalid_utf8(data: memoryview, descriptor: Descriptor, prefix: str) -> list[str]:
    found: list[str] = []
    seen: dict[int, int] = {}  # occurrences of each repeated field so far: an element's index
    position = 0
    while position < len(data):
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
                        found.append(name)
                elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                    # A map's entry is a message of its key and value: `labels[3].key`, the entry by position.
                    found += _invalid_utf8(value, field.message_type, f"{name}.")
        else:
            raise _NotWellFormed
        if position > len(data):
            raise _NotWellFormed
    return found


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
