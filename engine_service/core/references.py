"""References inside step parameters: `${inputs.x}`, `${steps.a.output.items[0].id}`,
`${steps.a.status}`, `${secrets.NAME}`.

A string that is exactly one reference is replaced by the referenced value, keeping its
type (a number stays a number); references inside a longer string are interpolated, with
non-strings rendered as compact JSON with sorted keys, so equal values always render the
same. `$${` is a literal `${`. Dict keys are never resolved, only values.

Path segments are `.name` (letters, digits, `_`, `-`), `[0]` (a list index) and `["any
key"]` (a JSON string, for keys that are not names).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from engine_service.core.errors import InvalidReference
from engine_service.core.model import JsonValue

Root = Literal["inputs", "steps", "secrets"]
Segment = str | int

ROOTS: Final = ("inputs", "steps", "secrets")
STEP_FIELDS: Final = ("output", "status")
REDACTED: Final = "***"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SEGMENT = re.compile(
    r'\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)|\[(?:(?P<index>\d+)|(?P<key>"(?:[^"\\]|\\.)*"))\]'
)
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Reference:
    """One parsed reference; `path` is everything after the root (for steps: id, field, ...)."""

    root: Root
    path: tuple[Segment, ...]

    @property
    def step_id(self) -> str | None:
        return str(self.path[0]) if self.root == "steps" else None

    @property
    def name(self) -> str:
        """Dotted form such as `inputs.customer.id` or `steps.a.output.items[0]`."""
        return self.root + "".join(_format_segment(s) for s in self.path)

    @property
    def text(self) -> str:
        return "${" + self.name + "}"

    def __str__(self) -> str:
        return self.text


def _format_segment(segment: Segment) -> str:
    if isinstance(segment, int):
        return f"[{segment}]"
    if _NAME.fullmatch(segment):
        return f".{segment}"
    return f"[{json.dumps(segment, ensure_ascii=False)}]"


def parse_reference(text: str) -> Reference:
    """Parse a string that is exactly one reference, e.g. `${inputs.a.b[0]}`."""
    parts = _split_template(text)
    if len(parts) != 1 or not isinstance(parts[0], Reference):
        raise InvalidReference(text=text, reason="expected exactly one ${...} reference")
    return parts[0]


@functools.lru_cache(maxsize=4096)
def _split_template(text: str) -> tuple[str | Reference, ...]:
    """Literal text and references, in order; adjacent literals merged, empty ones dropped.

    Cached: the same parameter strings are resolved for every execution of a workflow.
    """
    parts: list[str | Reference] = []
    literal: list[str] = []
    position = 0
    while (dollar := text.find("$", position)) >= 0:
        literal.append(text[position:dollar])
        if text.startswith("$${", dollar):
            literal.append("${")
            position = dollar + 3
        elif text.startswith("${", dollar):
            end = _reference_end(text, dollar + 2)
            parts.extend(p for p in ["".join(literal)] if p)
            literal = []
            parts.append(_parse_body(text[dollar + 2 : end], text))
            position = end + 1
        else:
            literal.append("$")
            position = dollar + 1
    literal.append(text[position:])
    parts.extend(p for p in ["".join(literal)] if p)
    return tuple(parts)


def _reference_end(text: str, start: int) -> int:
    """Index of the `}` closing a reference; braces inside quoted keys do not count."""
    in_string = False
    index = start
    while index < len(text):
        char = text[index]
        if in_string and char == "\\":
            index += 1
        elif char == '"':
            in_string = not in_string
        elif char == "}" and not in_string:
            return index
        index += 1
    raise InvalidReference(text=text, reason="unterminated reference: missing '}'")


def _parse_body(body: str, text: str) -> Reference:
    stripped = body.strip()
    root_match = _NAME.match(stripped)
    if root_match is None:
        raise InvalidReference(text=text, reason=f"expected a root name in '${{{body}}}'")
    root = root_match.group()
    if root not in ROOTS:
        raise InvalidReference(
            text=text, reason=f"unknown root {root!r}: expected inputs, steps or secrets"
        )
    path = _parse_segments(stripped, root_match.end(), text)
    _check_shape(cast(Root, root), path, text)
    return Reference(root=cast(Root, root), path=path)


def _parse_segments(body: str, position: int, text: str) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    while position < len(body):
        match = _SEGMENT.match(body, position)
        if match is None:
            raise InvalidReference(
                text=text,
                reason=f'unexpected {body[position:]!r}: use .name, [index] or ["key"]',
            )
        if match.group("name") is not None:
            segments.append(match.group("name"))
        elif match.group("index") is not None:
            segments.append(int(match.group("index")))
        else:
            segments.append(_decode_key(match.group("key"), text))
        position = match.end()
    return tuple(segments)


def _decode_key(quoted: str, text: str) -> str:
    try:
        return str(json.loads(quoted))
    except ValueError as exc:
        raise InvalidReference(text=text, reason=f"bad key {quoted}: {exc}") from exc


def _check_shape(root: Root, path: tuple[Segment, ...], text: str) -> None:
    """Each root has its own shape: the errors say which one was expected."""
    if root == "inputs" and (not path or isinstance(path[0], int)):
        raise InvalidReference(text=text, reason="expected ${inputs.<name>...}")
    if root == "secrets" and (len(path) != 1 or isinstance(path[0], int)):
        raise InvalidReference(text=text, reason="expected ${secrets.<NAME>}")
    if root == "steps":
        if len(path) < 2 or isinstance(path[0], int) or path[1] not in STEP_FIELDS:
            raise InvalidReference(
                text=text, reason="expected ${steps.<id>.output...} or ${steps.<id>.status}"
            )
        if path[1] == "status" and len(path) > 2:
            raise InvalidReference(text=text, reason="a step's status has no fields")


def iter_strings(value: JsonValue) -> Iterator[tuple[tuple[Segment, ...], str]]:
    """Every string value (not dict key) inside `value`, with its path from the top."""
    if isinstance(value, str):
        yield (), value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            for path, text in iter_strings(item):
                yield (str(key), *path), text
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            for path, text in iter_strings(item):
                yield (index, *path), text


def template_references(text: str) -> list[Reference]:
    """The references in one string; raises InvalidReference if any is malformed."""
    return [part for part in _split_template(text) if isinstance(part, Reference)]


def find_references(value: JsonValue) -> list[Reference]:
    """Every reference in `value`, in document order (repeats included)."""
    return [ref for _, text in iter_strings(value) for ref in template_references(text)]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of resolving references; `value` is only usable when `complete`.

    Missing references are listed by dotted name (`inputs.customer.id`), sorted and
    de-duplicated, so the same gaps always produce the same report.
    """

    value: JsonValue
    missing_inputs: tuple[str, ...] = ()
    missing_steps: tuple[str, ...] = ()
    missing_secrets: tuple[str, ...] = ()
    secret_values: frozenset[str] = frozenset()

    @property
    def complete(self) -> bool:
        return not (self.missing_inputs or self.missing_steps or self.missing_secrets)


@dataclass(slots=True)
class _Resolver:
    roots: Mapping[str, Any]
    missing: dict[str, set[str]] = field(default_factory=lambda: {r: set() for r in ROOTS})
    secrets_used: set[str] = field(default_factory=set)

    def value(self, value: JsonValue) -> JsonValue:
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, Mapping):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def string(self, text: str) -> JsonValue:
        parts = _split_template(text)
        if len(parts) == 1 and isinstance(parts[0], Reference):
            found = self.lookup(parts[0])
            return text if found is _MISSING else copy.deepcopy(found)
        rendered: list[str] = []
        for part in parts:
            found = part if isinstance(part, str) else self.lookup(part)
            rendered.append(str(part) if found is _MISSING else _render(found))
        return "".join(rendered)

    def lookup(self, reference: Reference) -> Any:
        found = _follow(self.roots[reference.root], reference.path)
        if found is _MISSING:
            self.missing[reference.root].add(reference.name)
        elif reference.root == "secrets":
            self.secrets_used.add(str(found))
        return found


def _follow(container: Any, path: tuple[Segment, ...]) -> Any:
    current = container
    for segment in path:
        if isinstance(segment, int):
            if not isinstance(current, list | tuple) or segment >= len(current):
                return _MISSING
            current = current[segment]
        elif isinstance(current, Mapping) and segment in current:
            current = current[segment]
        else:
            return _MISSING
    return current


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


def resolve(
    value: JsonValue,
    *,
    inputs: Mapping[str, Any],
    steps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, str],
) -> Resolution:
    """Resolve every reference in `value` against execution inputs, settled steps
    (`{id: {"output": ..., "status": "COMPLETED"}}`) and the secret source.

    Raises InvalidReference for malformed references (validation rejects those earlier).
    """
    if isinstance(value, Mapping) and not value:  # no parameters: nothing to resolve
        return Resolution(value={})
    resolver = _Resolver(roots={"inputs": inputs, "steps": steps, "secrets": secrets})
    resolved = resolver.value(value)
    return Resolution(
        value=resolved,
        missing_inputs=tuple(sorted(resolver.missing["inputs"])),
        missing_steps=tuple(sorted(resolver.missing["steps"])),
        missing_secrets=tuple(sorted(resolver.missing["secrets"])),
        secret_values=frozenset(resolver.secrets_used),
    )


def redact(value: JsonValue, secret_values: Iterable[str]) -> JsonValue:
    """Replace every occurrence of any secret inside strings (values and keys) by `***`.

    Longer secrets are matched first, so a secret containing another is hidden whole.
    """
    secrets = sorted({s for s in secret_values if s}, key=lambda s: (-len(s), s))
    if not secrets:
        return value
    pattern = re.compile("|".join(re.escape(s) for s in secrets))
    return _map_strings(value, lambda text: pattern.sub(REDACTED, text))


def _map_strings(value: JsonValue, change: Callable[[str], str]) -> JsonValue:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {
            change(k) if isinstance(k, str) else k: _map_strings(v, change)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_map_strings(item, change) for item in value]
    return value
