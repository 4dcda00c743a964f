"""Dependency-graph algorithms: order, cycles, stages, ancestry."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_service.core.graph import (
    CycleError,
    find_cycle,
    stages,
    topological_order,
    upstream,
    upstream_sets,
)

# Shared CI machines are slow at times: time limits would make these flaky, not stricter.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50)


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """A DAG in a shuffled declaration order: edges only go from earlier to later nodes
    of a hidden order, so there is never a cycle."""
    size = draw(st.integers(min_value=0, max_value=12))
    hidden = [f"s{i}" for i in range(size)]
    deps = {
        node: draw(st.lists(st.sampled_from(hidden[:i]), unique=True)) if i else []
        for i, node in enumerate(hidden)
    }
    declared = draw(st.permutations(hidden))
    return list(declared), deps


def test_independent_steps_keep_declaration_order() -> None:
    assert topological_order(["c", "a", "b"], {}) == ["c", "a", "b"]


def test_a_step_comes_after_its_dependencies() -> None:
    assert topological_order(["b", "a"], {"b": ["a"]}) == ["a", "b"]


def test_ready_ties_are_broken_by_declaration_order_not_by_readiness() -> None:
    # d becomes ready (after a) before c is considered, but c is declared first.
    ids = ["a", "c", "d", "b"]
    assert topological_order(ids, {"d": ["a"], "c": ["b"]}) == ["a", "d", "b", "c"]


def test_unknown_and_repeated_dependencies_are_ignored() -> None:
    assert topological_order(["a", "b"], {"b": ["a", "a", "ghost"]}) == ["a", "b"]


def test_topological_order_of_a_cycle_raises_with_the_cycle() -> None:
    with pytest.raises(CycleError, match=r"cycle: a -> b -> a") as info:
        topological_order(["a", "b", "c"], {"a": ["b"], "b": ["a"]})
    assert info.value.cycle == ("a", "b", "a")


def test_find_cycle_is_none_for_a_dag() -> None:
    assert find_cycle(["a", "b", "c"], {"b": ["a"], "c": ["a", "b"]}) is None


def test_find_cycle_follows_execution_direction_from_the_earliest_step() -> None:
    # c depends on b, b on a, a on c: a runs before b runs before c runs before a.
    deps = {"a": ["c"], "b": ["a"], "c": ["b"]}
    assert find_cycle(["x", "b", "a", "c"], deps) == ["b", "c", "a", "b"]


def test_find_cycle_reports_a_self_dependency() -> None:
    assert find_cycle(["a"], {"a": ["a"]}) == ["a", "a"]


def test_find_cycle_skips_acyclic_parts_before_the_cycle() -> None:
    deps = {"b": ["a"], "d": ["c", "e"], "e": ["d"], "f": ["a"]}
    assert find_cycle(["a", "b", "f", "c", "d", "e"], deps) == ["d", "e", "d"]


def test_stages_group_steps_that_can_run_in_parallel() -> None:
    deps = {"b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    assert stages(["a", "b", "c", "d", "e"], deps) == [["a", "e"], ["b", "c"], ["d"]]


def test_stages_of_nothing_is_empty() -> None:
    assert stages([], {}) == []


def test_upstream_is_transitive_and_excludes_the_step_itself() -> None:
    deps = {"b": ["a"], "c": ["b"], "d": ["a"]}
    assert upstream("c", deps) == {"a", "b"}
    assert upstream("a", deps) == frozenset()


def test_upstream_terminates_on_a_cycle() -> None:
    assert upstream("a", {"a": ["b"], "b": ["a"]}) == {"a", "b"}


def test_upstream_sets_match_upstream_per_step() -> None:
    deps = {"b": ["a"], "c": ["b", "a"], "d": ["c"]}
    ids = ["a", "b", "c", "d"]
    assert upstream_sets(ids, deps) == {step: upstream(step, deps) for step in ids}


@relaxed
@given(dags())
def test_topological_order_puts_every_dependency_first(
    dag: tuple[list[str], dict[str, list[str]]],
) -> None:
    ids, deps = dag
    order = topological_order(ids, deps)
    assert sorted(order) == sorted(ids)
    position = {step: index for index, step in enumerate(order)}
    for step, dependencies in deps.items():
        assert all(position[d] < position[step] for d in dependencies)


@relaxed
@given(dags())
def test_topological_order_is_deterministic_and_idempotent(
    dag: tuple[list[str], dict[str, list[str]]],
) -> None:
    ids, deps = dag
    order = topological_order(ids, deps)
    assert topological_order(list(ids), dict(deps)) == order
    # Re-declaring steps in their execution order changes nothing (canonical form relies
    # on it).
    assert topological_order(order, deps) == order


@relaxed
@given(dags())
def test_stages_respect_dependencies_and_cover_every_step(
    dag: tuple[list[str], dict[str, list[str]]],
) -> None:
    ids, deps = dag
    layers = stages(ids, deps)
    level = {step: index for index, layer in enumerate(layers) for step in layer}
    assert sorted(level) == sorted(ids)
    for step, dependencies in deps.items():
        assert all(level[d] < level[step] for d in dependencies)
    assert find_cycle(ids, deps) is None


@relaxed
@given(dags(), st.data())
def test_an_added_back_edge_is_found_as_a_cycle(
    dag: tuple[list[str], dict[str, list[str]]], data: st.DataObject
) -> None:
    ids, deps = dag
    candidates = [(step, d) for step, ds in deps.items() for d in ds]
    if not candidates:
        return
    step, dependency = data.draw(st.sampled_from(candidates))
    cyclic = {**deps, dependency: [*deps[dependency], step]}
    cycle = find_cycle(ids, cyclic)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    for before, after in itertools.pairwise(cycle):
        assert before in cyclic[after]
