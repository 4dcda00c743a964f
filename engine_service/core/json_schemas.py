"""JSON Schemas of inputs, step parameters and outputs, matched in linear time.

jsonschema runs `pattern` and `patternProperties` with Python's `re`, a backtracking
engine: `^(a+)+$` against 27 a's and a `!` takes seconds, on the event loop. Here those
keywords, and `additionalProperties` (which runs the patternProperties again), use RE2
(google-re2), whose matching time is linear in the text. RE2 has no backreferences or
lookaround, so a schema with a pattern it cannot compile is refused at registration,
and so is one combining `unevaluatedProperties` with `patternProperties` (jsonschema
would run those patterns with `re` to find the evaluated properties). Formats are not
checked (no format checker), so `format: regex` runs nothing.

A definition is immutable, so each schema's validator is built once.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Final

import jsonschema
import re2
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

Where = tuple[str | int, ...]

_KNOWN_DRAFTS: Final = frozenset(
    str(cls.META_SCHEMA.get("$id", cls.META_SCHEMA.get("id", ""))).rstrip("#")
    for cls in (
        jsonschema.Draft4Validator,
        jsonschema.Draft6Validator,
        jsonschema.Draft7Validator,
        jsonschema.Draft201909Validator,
        jsonschema.Draft202012Validator,
    )
)
_VALIDATORS_KEPT: Final = 256


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # refusals are reported, not logged by the C++ library
    options.never_capture = True  # only whether it matches counts
    return options


_OPTIONS: Final = _options()


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def _reason(error: Exception) -> str:
    reason = error.args[0] if error.args else error
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


def _matches(pattern: str, text: str) -> bool:
    """JSON Schema patterns are unanchored: a match anywhere counts. A pattern RE2 cannot
    compile (registration refuses them; a definition stored before might hold one)
    raises ValidationError."""
    try:
        regex = _regex(pattern)
    except re2.error as exc:
        raise ValidationError(f"pattern {pattern!r} is not supported: {_reason(exc)}") from exc
    return regex.search(text) is not None


# -- the keywords, as jsonschema implements them, with RE2 --------------------------------
# (`validator` is Any: `descend` is jsonschema's, outside its Validator protocol)


def _reporting_unsupported(keyword: Any) -> Any:
    @functools.wraps(keyword)
    def checked(*args: Any) -> Iterator[Any]:
        try:
            yield from keyword(*args)
        except ValidationError as error:
            yield error

    return checked


@_reporting_unsupported
def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@_reporting_unsupported
def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@_reporting_unsupported
def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [
        key
        for key in instance
        if key not in properties and not any(_matches(p, key) for p in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            listed = ", ".join(repr(each) for each in sorted(patterns))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {listed}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            named = ", ".join(repr(each) for each in sorted(extras, key=str))
            yield ValidationError(
                f"Additional properties are not allowed ({named} {verb} unexpected)"
            )


_LINEAR_KEYWORDS: Final = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


@functools.cache
def _linear(draft: type[Validator]) -> type[Validator]:
    extend: Any = jsonschema.validators.extend  # untyped in the stubs
    linear: type[Validator] = extend(draft, _LINEAR_KEYWORDS)
    return linear


# -- validating values ---------------------------------------------------------------------

_built: OrderedDict[int, tuple[Mapping[str, Any], Validator]] = OrderedDict()
_built_lock = threading.Lock()  # definitions are validated on worker threads too


def validator(schema: Mapping[str, Any]) -> Validator:
    """The validator of `schema` (its own draft, RE2 for patterns), built once per schema
    object; the cache holds the schema, so its id cannot be reused while cached."""
    key = id(schema)
    with _built_lock:
        found = _built.get(key)
        if found is not None and found[0] is schema:
            _built.move_to_end(key)
            return found[1]
    built = _linear(validator_for(schema))(schema)
    with _built_lock:
        _built[key] = (schema, built)
        if len(_built) > _VALIDATORS_KEPT:
            _built.popitem(last=False)
    return built


def validation_errors(value: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    return validator(schema).iter_errors(value)


# -- checking schemas at registration ------------------------------------------------------


def schema_problem(schema: Mapping[str, Any]) -> tuple[Where, str] | None:
    """Where and why `schema` is not a JSON Schema the engine accepts: a draft it knows,
    valid under that draft's meta-schema, every pattern one RE2 compiles."""
    declared = schema.get("$schema")
    if declared is not None and (
        not isinstance(declared, str) or declared.rstrip("#") not in _KNOWN_DRAFTS
    ):
        return ("$schema",), f"unsupported JSON Schema draft {declared!r}"
    try:
        validator_for(schema).check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        return tuple(exc.absolute_path), f"invalid JSON Schema: {exc.message}"
    return next(_pattern_problems(schema), None)


def _pattern_problems(schema: Mapping[str, Any]) -> Iterator[tuple[Where, str]]:
    """Iterative, so a schema nested deep cannot exhaust the stack. Data (`enum`,
    `const`, ...) is read too: a "pattern" key there is refused only if RE2 cannot
    compile it, which keeps every pattern the validator may meet compilable."""
    uses: dict[str, Where] = {}
    pending: list[tuple[Where, Any]] = [((), schema)]
    while pending:
        where, current = pending.pop()
        if isinstance(current, list):
            pending.extend(((*where, i), item) for i, item in enumerate(current))
            continue
        if not isinstance(current, Mapping):
            continue
        for key, value in current.items():
            if key in ("patternProperties", "unevaluatedProperties"):
                uses.setdefault(key, (*where, key))
            if key == "pattern" and isinstance(value, str):
                yield from _regex_problem((*where, key), value)
            elif key == "patternProperties" and isinstance(value, Mapping):
                for pattern in value:
                    yield from _regex_problem((*where, key, pattern), pattern)
            pending.append(((*where, key), value))
    if len(uses) == 2:
        yield (
            uses["unevaluatedProperties"],
            "unevaluatedProperties cannot be combined with patternProperties in one schema "
            "(jsonschema would match the patterns with a backtracking regex engine)",
        )


def _regex_problem(where: Where, pattern: str) -> Iterator[tuple[Where, str]]:
    try:
        _regex(pattern)
    except re2.error as exc:
        yield where, f"{pattern!r} is not a regular expression RE2 supports: {_reason(exc)}"
