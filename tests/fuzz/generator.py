"""Requests generated from the contract's own descriptors.

Each request starts as a plausible one (fields named in the service's `Pools` get values
that exist: a registered workflow, a real execution id), then has a few fields, chosen
among every field path of the request type, set to hostile values of the field's type:
boundary and out-of-range numbers, undefined enum numbers, NUL and control characters,
huge strings, Timestamps and Durations out of range, Structs with NaN, NUL or deep
nesting. Some requests are instead built from scratch with every field random, and some
are corrupted at the wire level (`wire.corrupt`). Nothing here knows a method by name:
a field added to the contract is fuzzed without anyone touching this file.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.fuzz import wire

F = FieldDescriptor
Path = tuple[FieldDescriptor, ...]
WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.Struct"}
HUGE = 4_200_000  # over analytics' 4 MiB receive limit, under the engine's 16 MiB

STRINGS: Sequence[str] = (
    *("", " ", "\x00", "a\x00b", "\x01", "\n", "\t", "\x7f", "\x9b", "é", "\u202e", "\ufeff"),
    *(
        "\U0001d518\U0001d52b\U0001d526",
        "😀",
        "../../etc/passwd",
        "Europe",
        "Europe/Paris",
        "Nowhere/Land",
        "UTC/x",
    ),
    *("' OR 1=1 --", "%s%n%x", "${inputs.x}", "${secrets.TOKEN}", "* * * * *", "61 * * * *"),
    *("@reboot", "0 0 31 2 *", "null", "{}", "\\u0000", "o:1", "b286MQ==", "b286wrI="),
    *("x" * 64, "x" * 65, "x" * 127, "x" * 128, "x" * 129, "x" * 256, "x" * 257),
)
LONG_STRINGS: Sequence[str] = ("x" * 65_536, "x" * 65_537, "é" * 40_000, "t" * 100_000)
INT32 = (0, 1, -1, 2, 99, 1000, 2**31 - 1, -(2**31))
INT64 = (*INT32, 2**53 + 1, 2**62, 2**63 - 1, -(2**63))
DOUBLES = (0.0, -0.0, 1.5, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 2.0**53)
SECONDS: Sequence[int] = (
    *(0, 1, -1, 59, 2**31, 2**62, -(2**62), 253_402_300_799, 253_402_300_800),
    *(-62_135_596_800, -62_135_596_801, 315_576_000_000, 315_576_000_001, 3_155_760_001),
)
NANOS = (0, 1, -1, -5, 999_999_999, 1_000_000_000, 2**31 - 1, -(2**31))


Strings = dict[str, list[str]]


@dataclass
class Pools:
    """Plausible values, by field name: strings, and whole messages (e.g. a definition)."""

    strings: Mapping[str, Sequence[str]] = field(default_factory=dict)
    messages: Mapping[str, Callable[[random.Random], Message]] = field(default_factory=dict)


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@functools.cache
def field_paths(descriptor: Descriptor, depth: int = 4) -> tuple[Path, ...]:
    """Every field path of `descriptor`, `depth` messages deep; well-known types are leaves."""
    found: list[Path] = []

    def walk(current: Descriptor, left: int, prefix: Path) -> None:
        for item in current.fields:
            found.append((*prefix, item))
            target = item.message_type
            if item.type != F.TYPE_MESSAGE or target is None or left == 0:
                continue
            if target.full_name not in WELL_KNOWN and not target.GetOptions().map_entry:
                walk(target, left - 1, (*prefix, item))

    walk(descriptor, depth, ())
    return tuple(found)


class RequestGenerator:
    def __init__(self, pools: Pools) -> None:
        self._pools = pools

    def request(self, rng: random.Random, descriptor: Descriptor) -> bytes:
        """The bytes of one request of type `descriptor`."""
        roll = rng.random()
        if roll < 0.15:
            return wire.corrupt(
                rng, self.plausible(rng, descriptor).SerializeToString(), descriptor
            )
        message = self.random_message(rng, descriptor, 3) if roll < 0.25 else None
        if message is None:
            message = self.plausible(rng, descriptor)
            for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
                self.mutate(rng, message)
        return message.SerializeToString()

    def plausible(self, rng: random.Random, descriptor: Descriptor) -> Message:
        message = message_class(descriptor)()
        for item in descriptor.fields:
            made = self._pools.messages.get(item.name)
            if made is not None and item.type == F.TYPE_MESSAGE:
                target = getattr(message, item.name)
                (target.add() if item.is_repeated else target).CopyFrom(made(rng))
            elif item.type == F.TYPE_STRING and item.name in self._pools.strings:
                value = rng.choice(self._pools.strings[item.name])
                _assign(message, item, value)
        return message

    def mutate(self, rng: random.Random, message: Message) -> None:
        """Sets one field, anywhere in `message`, to a hostile value of its type."""
        path = rng.choice(field_paths(message.DESCRIPTOR))
        parent = message
        for step in path[:-1]:
            parent = _child(rng, parent, step)
        # A value this field's Python type cannot hold is skipped: the wire tier covers it.
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            _assign(parent, path[-1], self.value(rng, path[-1]))

    def random_message(self, rng: random.Random, descriptor: Descriptor, depth: int) -> Message:
        message = message_class(descriptor)()
        for item in descriptor.fields:
            if rng.random() < 0.5:
                continue
            for _ in range(rng.choice((1, 1, 2, 3)) if item.is_repeated else 1):
                with contextlib.suppress(ValueError, TypeError, OverflowError):
                    _assign(message, item, self._random_value(rng, item, depth))
        return message

    def value(self, rng: random.Random, item: FieldDescriptor) -> Any:
        """A hostile value for `item`; sometimes a plausible one, so checks pass and the
        request goes deeper."""
        pooled = self._pools.strings.get(item.name)
        if item.type == F.TYPE_STRING and pooled and rng.random() < 0.25:
            return rng.choice(pooled)
        made = self._pools.messages.get(item.name)
        if made is not None and item.type == F.TYPE_MESSAGE and rng.random() < 0.25:
            return made(rng)
        return self._random_value(rng, item, 2)

    def _random_value(self, rng: random.Random, item: FieldDescriptor, depth: int) -> Any:
        kind = item.type
        if kind == F.TYPE_MESSAGE:
            target = item.message_type
            assert target is not None
            if target.GetOptions().map_entry:
                return (self.value(rng, target.fields_by_name["key"]), self._map_value(rng, target))
            if target.full_name in WELL_KNOWN:
                return well_known(rng, target.full_name)
            if depth <= 0:
                return message_class(target)()
            return self.random_message(rng, target, depth - 1)
        return scalar(rng, item)

    def _map_value(self, rng: random.Random, entry: Descriptor) -> Any:
        return self._random_value(rng, entry.fields_by_name["value"], 1)


def scalar(rng: random.Random, item: FieldDescriptor) -> Any:
    kind = item.type
    if kind == F.TYPE_STRING:
        return hostile_string(rng)
    if kind == F.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 32))
    if kind == F.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == F.TYPE_ENUM:
        assert item.enum_type is not None
        return rng.choice((*item.enum_type.values_by_number, 99, -1, 2**31 - 1))
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return rng.choice(DOUBLES)
    if kind in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return rng.choice(INT64)
    if kind in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return rng.choice((0, 1, 2**32 - 1))
    if kind in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return rng.choice((0, 1, 2**64 - 1))
    return rng.choice(INT32)


def hostile_string(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.005:
        return "x" * HUGE
    if roll < 0.05:
        return rng.choice(LONG_STRINGS)
    if roll < 0.1:
        return "".join(chr(rng.choice((0, 1, 31, 127, 0x85, 0x2028, 0xFFFF))) for _ in range(4))
    return rng.choice(STRINGS)


def well_known(rng: random.Random, name: str) -> Message:
    if name == "google.protobuf.Struct":
        return hostile_struct(rng)
    kind = timestamp_pb2.Timestamp if name == "google.protobuf.Timestamp" else duration_pb2.Duration
    made = kind()
    made.seconds = rng.choice(SECONDS)
    made.nanos = rng.choice(NANOS)
    return made


def hostile_struct(rng: random.Random) -> struct_pb2.Struct:
    made = struct_pb2.Struct()
    choice = rng.randrange(10)
    if choice == 0:
        made.update({"x": rng.choice((math.nan, math.inf, -math.inf))})
    elif choice == 1:
        made.update({"k\x00": 1, "list": [1, {"deep": "a\x00"}]})
    elif choice == 2:
        cursor = made
        for _ in range(rng.choice((10, 25, 31))):  # near the decoder's limit from below
            cursor = cursor.fields["a"].struct_value
    elif choice == 3:
        made.update(
            {"big": "x" * rng.choice((300_000, 1_100_000, HUGE if rng.random() < 0.2 else 1))}
        )
    elif choice == 4:
        made.update({f"k{i}": i for i in range(rng.choice((2_000, 20_000)))})
    elif choice == 5:
        made.update({"n": [math.nan] * 3, "s": "\x00" * 3})
    else:
        made.update({"n": rng.choice((1, 2.5, -3, 2**53)), "s": rng.choice(STRINGS[:12])})
    return made


def _child(rng: random.Random, parent: Message, step: FieldDescriptor) -> Message:
    """The sub-message at `step` of `parent`, made when absent (an element for lists)."""
    container = getattr(parent, step.name)
    if not step.is_repeated:
        child: Message = container
        return child
    if len(container) and rng.random() < 0.5:
        existing: Message = container[rng.randrange(len(container))]
        return existing
    added: Message = container.add()
    return added


def _assign(parent: Message, item: FieldDescriptor, value: Any) -> None:
    target = item.message_type
    if target is not None and target.GetOptions().map_entry:
        key, entry_value = value
        entries = getattr(parent, item.name)
        if isinstance(entry_value, Message):
            entries[key].CopyFrom(entry_value)
        else:
            entries[key] = entry_value
    elif item.is_repeated:
        items = getattr(parent, item.name)
        if isinstance(value, Message):
            items.add().CopyFrom(value)
        else:
            items.append(value)
    elif isinstance(value, Message):
        getattr(parent, item.name).CopyFrom(value)
    else:
        setattr(parent, item.name, value)
