"""Hypothesis strategies that build any request message of the contracts from its descriptor.

No library in the field does this for today's protobuf runtime (hypothesis-protobuf is gone from PyPI),
so it is written here, small: every field may be left unset or drawn by its type; strings come from a
pool of values that reach past the first check (ids that exist in the running stack, test cards,
currency and country codes) mixed with arbitrary text; numbers hug the boundaries; enums include a value
the contract does not define (proto3 enums are open, so a client can send one); nested messages recurse
to a small depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 3
# Values that pass format checks somewhere, so that a request gets past validation now and then.
COMMON_STRINGS = (
    "USD",
    "EUR",
    "usd",
    "XXX",
    "DE",
    "US",
    "grace@example.com",
    "not-an-email",
    "4242424242424242",
    "4000000000000002",
    "4000000000009995",
    "4000000000000119",
    "1234567890123456",
    "electronics",
    "correct horse battery staple",
    "Grace Hopper",
    "10115",
)
# Around a known value: right shape, wrong value (NUL is refused by every service: docs/chassis.md).
PADS = (" ", "\t", "\n", "\x00")
_INT_BOUNDS = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def strings(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from((*known, *COMMON_STRINGS)),
        st.just(""),
        st.text(max_size=24),
        st.text(alphabet=st.characters(codec="ascii"), min_size=200, max_size=3000),
        st.builds(lambda v, pad: f"{pad}{v}{pad}", st.sampled_from((*known, *COMMON_STRINGS)), st.sampled_from(PADS)),
    )


def _integers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = _INT_BOUNDS[field.cpp_type]
    return st.one_of(st.integers(min_value=max(low, -3), max_value=min(high, 120)), st.sampled_from((low, high)))


def _scalar(field: FieldDescriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        return strings(known)
    if cpp in _INT_BOUNDS:
        return _integers(field)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(width=32 if cpp == FieldDescriptor.CPPTYPE_FLOAT else 64)
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        defined = [v.number for v in field.enum_type.values]
        return st.sampled_from((*defined, max(defined) + 7))
    raise TypeError(f"no strategy for {field.full_name} (cpp type {cpp})")


def messages(descriptor: Descriptor, known: Sequence[str], depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type, any subset of fields set."""
    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if draw(st.booleans()) and (field.message_type is None or depth < MAX_DEPTH):
                assign(message, field, draw(values(field, known, depth)))
        return message

    return build()


def mutations(base: Message, known: Sequence[str], depth: int = 0) -> st.SearchStrategy[Message]:
    """`base` (a valid request) with one or two fields, at any depth, cleared or given generated values:
    requests that get past most checks and fail, if at all, on one thing."""
    fields = list(base.DESCRIPTOR.fields)
    if not fields:
        return st.just(base)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(base)()
        message.CopyFrom(base)
        for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2, unique=True)):
            current = getattr(base, field.name)
            if field.message_type is not None and not field.is_repeated and base.HasField(field.name):
                if depth < MAX_DEPTH and draw(st.booleans()):
                    getattr(message, field.name).CopyFrom(draw(mutations(current, known, depth + 1)))
                    continue
            elif field.message_type is not None and field.is_repeated and len(current) and draw(st.booleans()):
                index = draw(st.integers(0, len(current) - 1))
                getattr(message, field.name)[index].CopyFrom(draw(mutations(current[index], known, depth + 1)))
                continue
            message.ClearField(field.name)
            if draw(st.booleans()):
                assign(message, field, draw(values(field, known, depth)))
        return message

    return build()


def values(field: FieldDescriptor, known: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    """A value for `field`: a list for a repeated field, a message for a message field."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        raise TypeError(f"{field.full_name}: map fields are not generated (no request has one)")
    single = _single(field, known, depth)
    return st.lists(single, max_size=4) if field.is_repeated else single


def assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _single(field: FieldDescriptor, known: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        if depth >= MAX_DEPTH:
            return st.just(message_factory.GetMessageClass(field.message_type)())
        return messages(field.message_type, known, depth + 1)
    return _scalar(field, known)
