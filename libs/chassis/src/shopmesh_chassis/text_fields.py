"""One rule for every text field of every request: no NUL character (U+0000).

Protobuf strings are UTF-8, and U+0000 is valid UTF-8, so a client can send it; no shopmesh field means
anything by it (ids, names, addresses, queries), and PostgreSQL cannot store it in `text` at all (SQLite
can), so the same request would be a clean answer on `make run` and INTERNAL on Kubernetes. The chassis
refuses it for every service before any handler runs: INVALID_ARGUMENT with the field paths.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from shopmesh_chassis.errors import FieldViolation, InvalidArgument

NUL_CHARACTER = "NUL_CHARACTER"
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
