"""Bytes that are not a valid request, built at the wire level from a message's descriptor.

A Python message cannot hold invalid UTF-8 or nesting past protobuf's limit, so these are
written by hand: tags, lengths and payloads, as a hostile client would send them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from google.protobuf.descriptor import Descriptor, FieldDescriptor

F = FieldDescriptor
LENGTH_DELIMITED, START_GROUP, END_GROUP = 2, 3, 4
NESTING_LIMIT = 100  # protobuf's default recursion limit when decoding
UNKNOWN_FIELD = 9_999
INVALID_UTF8 = (b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80")


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers travel as ten-byte two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_paths(descriptor: Descriptor, depth: int = 3) -> list[tuple[FieldDescriptor, ...]]:
    """Paths to every string field (map keys and values too), `depth` messages deep."""
    return list(_string_paths(descriptor, depth, ()))


def _string_paths(
    descriptor: Descriptor, depth: int, prefix: tuple[FieldDescriptor, ...]
) -> Iterator[tuple[FieldDescriptor, ...]]:
    for field in descriptor.fields:
        if field.type == F.TYPE_STRING:
            yield (*prefix, field)
        elif field.type == F.TYPE_MESSAGE and depth > 0 and field.message_type is not None:
            yield from _string_paths(field.message_type, depth - 1, (*prefix, field))


def nested_payload(path: tuple[FieldDescriptor, ...], payload: bytes) -> bytes:
    """`payload` as the value of the last field of `path`, wrapped in each message above."""
    body = payload
    for field in reversed(path):
        body = delimited(field.number, body)
    return body


def invalid_utf8(rng: random.Random, descriptor: Descriptor) -> bytes | None:
    """A message whose string field, somewhere, holds bytes that are not UTF-8."""
    paths = string_paths(descriptor)
    if not paths:
        return None
    bad = rng.choice(INVALID_UTF8)
    return nested_payload(rng.choice(paths), rng.choice([b"", b"ok"]) + bad)


def deep_groups(rng: random.Random) -> bytes:
    """An unknown field of groups nested past the decoder's limit."""
    depth = rng.randint(NESTING_LIMIT + 1, NESTING_LIMIT + 60)
    return tag(UNKNOWN_FIELD, START_GROUP) * depth + tag(UNKNOWN_FIELD, END_GROUP) * depth


def deep_struct(depth: int) -> bytes:
    """A google.protobuf.Struct of `depth` nested objects {"a": {"a": ...}}."""
    body = b""
    for _ in range(depth):
        value = delimited(5, body)  # Value.struct_value
        entry = delimited(1, b"a") + delimited(2, value)  # the map entry: key, value
        body = delimited(1, entry)  # Struct.fields
    return body


def struct_paths(descriptor: Descriptor, depth: int = 3) -> list[tuple[FieldDescriptor, ...]]:
    found: list[tuple[FieldDescriptor, ...]] = []

    def walk(current: Descriptor, left: int, prefix: tuple[FieldDescriptor, ...]) -> None:
        for field in current.fields:
            target = field.message_type
            if field.type != F.TYPE_MESSAGE or target is None:
                continue
            if target.full_name == "google.protobuf.Struct":
                found.append((*prefix, field))
            elif left > 0 and not target.GetOptions().map_entry:
                walk(target, left - 1, (*prefix, field))

    walk(descriptor, depth, ())
    return found


def corrupt(rng: random.Random, valid: bytes, descriptor: Descriptor) -> bytes:
    """Bytes made from `valid` (a serialized request) that may well not decode."""
    kinds: list[Callable[[], bytes | None]] = [
        lambda: b"\xff",
        lambda: rng.randbytes(rng.randint(1, 64)),
        lambda: _flipped(rng, valid),
        lambda: valid[: rng.randint(0, max(0, len(valid) - 1))],
        lambda: valid + tag(1, LENGTH_DELIMITED) + varint(10_000) + b"abc",
        lambda: _with(valid, invalid_utf8(rng, descriptor)),
        lambda: valid + deep_groups(rng),
        lambda: _with(valid, _deep_struct_field(rng, descriptor)),
        lambda: valid + tag(UNKNOWN_FIELD, END_GROUP),
        lambda: valid + tag(0, 0) + b"\x00",
        lambda: valid + b"\x80" * 11,  # a varint that never ends
    ]
    while True:
        made = rng.choice(kinds)()
        if made is not None:
            return made


def _with(valid: bytes, extra: bytes | None) -> bytes | None:
    return None if extra is None else valid + extra


def _flipped(rng: random.Random, valid: bytes) -> bytes | None:
    if not valid:
        return None
    data = bytearray(valid)
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _deep_struct_field(rng: random.Random, descriptor: Descriptor) -> bytes | None:
    paths = struct_paths(descriptor)
    if not paths:
        return None
    return nested_payload(rng.choice(paths), deep_struct(rng.randint(40, 120)))
