"""The engine's request boundary: every request message is checked here, field by field,
before any servicer or the core sees it.

The walk is driven by the message descriptors, so a field added to the contract is
checked without anyone remembering to: strings (NUL, control characters, lengths),
enum numbers the contract does not define, doubles that are not finite, Timestamps and
Durations out of range, Struct values (numbers, NUL, the size of inputs). Each problem is
named by its field path (`definition.steps[2].timeout`), and a request with any problem
is refused as a whole with INVALID_ARGUMENT: the database, zoneinfo, croniter, CEL and the
JSON encoder never see a value they could fail on.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from engine_service.core.errors import Problem

# Timestamp and Duration ranges of the protobuf spec (0001-01-01 to 9999-12-31, ±10,000 y).
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
MAX_NANOS: Final = 999_999_999
# Widths of the columns these fields are stored in (engine_service.storage.models).
ID_COLUMN_LENGTH: Final = 128
IDEMPOTENCY_KEY_COLUMN_LENGTH: Final = 256
CRON_LENGTH: Final = 256
TIME_ZONE_LENGTH: Final = 64
# The tokens this server issues are a few dozen characters.
PAGE_TOKEN_LENGTH: Final = 128
# Enough to name what is wrong without answering a huge request with a huge error.
MAX_PROBLEMS: Final = 20

# Fields that name things: stored in id-width columns and compared in SQL.
_ID_FIELDS: Final = frozenset(
    {
        "id",
        "tenant",
        "workflow_id",
        "execution_id",
        "schedule_id",
        "parent_execution_id",
        "parent_step_id",
        "child_execution_id",
        "last_execution_id",
        "step_id",
        "step_ids",
        "action",
        "source",
        "target",
        "depends_on",
        "missing_inputs",
        "non_retryable_errors",
    }
)
_INPUT_FIELDS: Final = frozenset({"inputs"})
_ZONE_NAME: Final = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

F = FieldDescriptor


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on request values; the engine settings set them (see README "Limits")."""

    id_length: int = ID_COLUMN_LENGTH
    idempotency_key_length: int = IDEMPOTENCY_KEY_COLUMN_LENGTH
    text_length: int = 64 * 1024
    inputs_bytes: int = 1024 * 1024
    duration_seconds: int = 100 * 31_557_600  # a hundred years of 365.25 days


def request_problems(message: Message, limits: RequestLimits) -> list[Problem]:
    """Everything wrong with `message` (at most MAX_PROBLEMS), each named by its path."""
    problems: list[Problem] = []
    for problem in _message_problems(message, "", limits):
        problems.append(problem)
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


# -- messages and fields ---------------------------------------------------------------


def _message_problems(message: Message, prefix: str, limits: RequestLimits) -> Iterator[Problem]:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if _is_map(field):
            yield from _map_problems(field, value, path, limits)
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from _value_problems(field, item, f"{path}[{index}]", limits)
        else:
            yield from _value_problems(field, value, path, limits)


def _message_type(field: FieldDescriptor) -> Descriptor:
    described = field.message_type
    assert described is not None, f"{field.full_name} is not a message field"
    return described


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and bool(_message_type(field).GetOptions().map_entry)


def _map_problems(
    field: FieldDescriptor, entries: Any, path: str, limits: RequestLimits
) -> Iterator[Problem]:
    entry = _message_type(field)
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for key, item in entries.items():
        yield from _value_problems(key_field, key, f"{path} (a key)", limits)
        yield from _value_problems(value_field, item, f"{path}{_segment(key)}", limits)


def _value_problems(
    field: FieldDescriptor, value: Any, path: str, limits: RequestLimits
) -> Iterator[Problem]:
    kind = field.type
    if kind == F.TYPE_STRING:
        yield from _string_problems(field.name, value, path, limits)
    elif kind == F.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        if value not in enum.values_by_number:
            yield Problem(path, f"not a defined {enum.name} value: {value}")
    elif kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        if not math.isfinite(value):
            yield Problem(path, f"must be a finite number, got {value}")
    elif kind == F.TYPE_MESSAGE:
        yield from _submessage_problems(field, value, path, limits)


def _submessage_problems(
    field: FieldDescriptor, value: Message, path: str, limits: RequestLimits
) -> Iterator[Problem]:
    name = _message_type(field).full_name
    if name == "google.protobuf.Timestamp":
        yield from _timestamp_problems(value, path)
    elif name == "google.protobuf.Duration":
        yield from _duration_problems(value, path, limits)
    elif name == "google.protobuf.Struct":
        assert isinstance(value, struct_pb2.Struct)
        yield from _struct_problems(field.name, value, path, limits)
    else:
        yield from _message_problems(value, f"{path}.", limits)


# -- strings ---------------------------------------------------------------------------


def _string_problems(name: str, value: str, path: str, limits: RequestLimits) -> Iterator[Problem]:
    if "\x00" in value:
        yield Problem(path, "must not contain NUL characters")
        return
    if name == "time_zone":
        yield from _zone_problems(value, path)
        return
    bound, identifier = _string_rule(name, limits)
    if len(value) > bound:
        yield Problem(path, f"is {len(value)} characters long, over the limit of {bound}")
    elif identifier and _has_control_character(value):
        yield Problem(path, "must not contain control characters")


def _string_rule(name: str, limits: RequestLimits) -> tuple[int, bool]:
    """(longest allowed, whether control characters are refused) for a string field."""
    if name in _ID_FIELDS:
        return limits.id_length, True
    if name == "idempotency_key":
        return limits.idempotency_key_length, True
    if name == "page_token":
        return PAGE_TOKEN_LENGTH, True
    if name == "cron":
        return CRON_LENGTH, True
    return limits.text_length, False


def _has_control_character(value: str) -> bool:
    return not value.isprintable() and any(unicodedata.category(c) == "Cc" for c in value)


def _zone_problems(name: str, path: str) -> Iterator[Problem]:
    """Names zoneinfo fails on with OSError (too long, a directory such as "Europe").

    A well-formed name zoneinfo merely does not know is left to the schedule's own
    validation, which names it under the schedule's field.
    """
    if not name:
        return
    if len(name) > TIME_ZONE_LENGTH or not _ZONE_NAME.fullmatch(name):
        yield Problem(path, f"not an IANA time zone: {name[:TIME_ZONE_LENGTH]!r}")
        return
    try:
        ZoneInfo(name)
    except KeyError:  # ZoneInfoNotFoundError
        return
    except (ValueError, OSError):
        yield Problem(path, f"not an IANA time zone: {name!r}")


# -- well-known types ------------------------------------------------------------------


def _timestamp_problems(value: Any, path: str) -> Iterator[Problem]:
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS:
        yield Problem(path, "must be between 0001-01-01 and 9999-12-31 (UTC)")
    elif not 0 <= value.nanos <= MAX_NANOS:
        yield Problem(f"{path}.nanos", f"must be between 0 and {MAX_NANOS}, got {value.nanos}")


def _duration_problems(value: Any, path: str, limits: RequestLimits) -> Iterator[Problem]:
    if value.seconds < 0 or value.nanos < 0:
        yield Problem(path, "must not be negative")
    elif value.nanos > MAX_NANOS:
        yield Problem(f"{path}.nanos", f"must be between 0 and {MAX_NANOS}, got {value.nanos}")
    elif value.seconds > limits.duration_seconds:
        yield Problem(path, f"must be at most {limits.duration_seconds}s")


def _struct_problems(
    name: str, value: struct_pb2.Struct, path: str, limits: RequestLimits
) -> Iterator[Problem]:
    if name in _INPUT_FIELDS:
        size = value.ByteSize()
        if size > limits.inputs_bytes:
            yield Problem(path, f"is {size} bytes, over the limit of {limits.inputs_bytes}")
            return
    yield from _json_problems(value, path)


def _json_problems(root: struct_pb2.Struct, path: str) -> Iterator[Problem]:
    """NUL (Postgres' jsonb refuses it) and numbers JSON cannot hold, anywhere in `root`.

    Iterative: nesting is bounded by protobuf's decoder, but not by much.
    """
    pending: list[tuple[Any, str]] = [(root, path)]
    while pending:
        node, where = pending.pop()
        if isinstance(node, struct_pb2.Struct):
            for key, item in node.fields.items():
                if "\x00" in key:
                    yield Problem(where, "keys must not contain NUL characters")
                else:
                    pending.append((item, f"{where}{_segment(key)}"))
        elif isinstance(node, struct_pb2.ListValue):
            pending.extend((item, f"{where}[{i}]") for i, item in enumerate(node.values))
        else:
            yield from _json_value_problems(node, where, pending)


def _json_value_problems(
    node: struct_pb2.Value, where: str, pending: list[tuple[Any, str]]
) -> Iterator[Problem]:
    kind = node.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(node.number_value):
        yield Problem(where, f"must be a finite number, got {node.number_value}")
    elif kind == "string_value" and "\x00" in node.string_value:
        yield Problem(where, "must not contain NUL characters")
    elif kind == "struct_value":
        pending.append((node.struct_value, where))
    elif kind == "list_value":
        pending.append((node.list_value, where))


def _segment(key: str) -> str:
    """A Struct key or map key as a path segment: `.key`, or `['odd key']` quoted."""
    if _PLAIN_KEY.fullmatch(key):
        return f".{key}"
    return f"[{key[:64]!r}]"
