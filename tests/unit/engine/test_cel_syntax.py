"""The engine's own CEL parser against the library: it must understand every expression
the library accepts, and handing the library only the parts of the data an expression
names must never change what it evaluates to."""

from __future__ import annotations

from typing import Any

import cel
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine_service.core import cel_budget
from engine_service.core.cel_syntax import CelSyntaxError, parse, tokenize

relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)

ACTIVATION: dict[str, Any] = {
    "inputs": {
        "a": 3,
        "b": {"c": "text", "d": [1, 2, 3]},
        "items": [{"id": 1, "tags": ["x"]}, {"id": 2, "tags": []}],
        "k-x": True,
        "m": {"one": 1, "two": 2},
    },
    "steps": {"s": {"output": {"n": 5, "list": [4, 5]}, "status": "COMPLETED"}},
}

_ATOMS = st.sampled_from(
    [
        "inputs",
        "inputs.a",
        "inputs.b.c",
        "inputs.b.d",
        "inputs.items",
        "inputs.m",
        'inputs["k-x"]',
        "inputs['b']['d']",
        "inputs.missing",
        "steps",
        "steps.s.output.n",
        "steps.s.output.list",
        "steps['s'].status",
        "x",
        "1",
        "2u",
        "1.5",
        "-3",
        '"x"',
        "'it'",
        'r"\\d"',
        "'''a'b'''",
        "true",
        "null",
        "[1, 2]",
        "{'one': 1}",
    ]
)


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.sampled_from(["+", "-", "*", "==", "!=", "<", ">=", "&&", "||", "in"])
    macro = st.sampled_from(["all", "exists", "exists_one", "map", "filter"])
    return st.one_of(
        st.tuples(inner, binary, inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"!{e}"),
        inner.map(lambda e: f"size({e})"),
        inner.map(lambda e: f"{e}.size()"),
        inner.map(lambda e: f"{e}[0]"),
        inner.map(lambda e: f"{e}.id"),
        inner.map(lambda e: f'{e}["one"]'),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(inner, macro, inner).map(lambda t: f"{t[0]}.{t[1]}(x, {t[2]})"),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(inner, inner).map(lambda t: f"{{{t[0]}: {t[1]}}}"),
        inner.map(lambda e: f"has({e}.a)"),
    )


EXPRESSIONS = st.recursive(_ATOMS, _compound, max_leaves=12)


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        return "value", run()
    except (ValueError, RuntimeError, TypeError, KeyError, IndexError, ArithmeticError) as exc:
        return type(exc).__name__, str(exc)


@relaxed
@given(EXPRESSIONS)
@example("inputs.items.map(x, x.tags).exists(x, size(x) == 0)")
@example("steps.exists(k, steps[k].status == 'COMPLETED') && has(steps.s.output)")
def test_what_the_library_compiles_the_parser_parses(expression: str) -> None:
    try:
        cel.compile(expression)
    except ValueError:
        return
    parse(expression, max_depth=1000)


@relaxed
@given(EXPRESSIONS)
@example("has(inputs.b.c) && !has(inputs.b.nope) && inputs.b.d[1] == 2")
@example("[1].all(inputs, inputs == 1) && inputs.a == 3")
@example('inputs["k-x"] && steps["s"].output.list.all(x, x > 3)')
def test_handing_over_only_the_named_parts_changes_no_result(expression: str) -> None:
    try:
        program = cel.compile(expression)
        tree = parse(expression, max_depth=1000)
    except (ValueError, CelSyntaxError):
        return
    wanted = cel_budget.paths(tree)
    _, pruned = cel_budget.bounded_activation(tree, wanted, ACTIVATION, 10**12)
    full = _outcome(lambda: program.execute(dict(ACTIVATION)))
    assert _outcome(lambda: program.execute(pruned)) == full


@pytest.mark.parametrize(
    ("expression", "depth"),
    [
        ("a", 1),
        ("a.b.c", 3),
        ("1 + 2 + 3", 3),
        ("1 + 2 * 3", 3),
        ("!!a", 3),
        ("[1, [2, [3]]]", 4),
        ("a ? b : c ? d : e", 3),
        ("x.all(y, y > 0)", 3),
        ("f(a.b)", 3),
        ("{'k': a.b}", 3),
        ("Msg{f: 1}", 2),
    ],
)
def test_depth_counts_the_levels_of_the_tree(expression: str, depth: int) -> None:
    assert parse(expression, max_depth=100).depth == depth


def test_comments_spaces_and_string_forms_are_single_tokens() -> None:
    tokens = tokenize('a // ignored\n + r\'\\\' + """x"y""" + b\'z\' + 0x1Fu + 1e-3')
    assert [kind for kind, _ in tokens] == [
        "ident", "op", "str", "op", "str", "op", "str", "op", "num", "op", "num", "end",
    ]  # fmt: skip


@pytest.mark.parametrize("text", ["a +", "(a", "a.", "[1, 2", "a ? b", "#", "1 2", "'open"])
def test_broken_expressions_are_syntax_errors(text: str) -> None:
    with pytest.raises(CelSyntaxError):
        parse(text, max_depth=100)


def test_what_an_expression_reads_is_found_through_macros_and_shadowing() -> None:
    tree = parse(
        "inputs.items.all(x, x.id > 0) && has(inputs.b.c) && steps['s'].output.n > 1"
        " && [1].exists(inputs, inputs > 0) && size(steps) > 0",
        max_depth=100,
    )
    assert cel_budget.paths(tree) == {
        "inputs": frozenset({("items",), ("b", "c")}),
        "steps": frozenset({("s", "output", "n"), ()}),
    }
