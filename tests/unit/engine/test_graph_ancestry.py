"""Ancestry for every step at once, and strongly connected groups: what validation and
conditions use instead of one upstream walk per step (quadratic on a long chain)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_service.core.definitions import DefinitionLimits, parse_definition
from engine_service.core.errors import DefinitionInvalid
from engine_service.core.graph import Ancestry, strongly_connected, upstream

relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """Any graph: cycles, self-loops and dependencies on undeclared ids included."""
    size = draw(st.integers(min_value=0, max_value=10))
    ids = [f"s{i}" for i in range(size)]
    targets = st.sampled_from([*ids, "ghost"]) if ids else st.just("ghost")
    deps = {step: draw(st.lists(targets, max_size=4)) for step in ids}
    return ids, deps


@relaxed
@given(graphs())
def test_ancestry_agrees_with_upstream_on_any_graph(
    graph: tuple[list[str], dict[str, list[str]]],
) -> None:
    ids, deps = graph
    ancestry = Ancestry(ids, deps)
    for step in ids:
        expected = upstream(step, {k: [d for d in v if d in ids] for k, v in deps.items()})
        assert set(ancestry.upstream(step)) == expected
        assert ancestry.upstream(step) == [s for s in ids if s in expected]
        assert ancestry.count(step) == len(expected)
        assert all(ancestry.is_upstream(other, step) == (other in expected) for other in ids)
        assert set(ancestry.upstream(step, with_self=True)) == expected | {step}


@relaxed
@given(graphs())
def test_strongly_connected_groups_partition_the_steps_dependencies_first(
    graph: tuple[list[str], dict[str, list[str]]],
) -> None:
    ids, deps = graph
    groups = strongly_connected(ids, deps)
    assert sorted(s for group in groups for s in group) == sorted(ids)
    seen: set[str] = set()
    for group in groups:
        reach = {s: upstream(s, deps) for s in group}
        # One group: its members reach one another (a single step only if it is alone).
        assert all(set(group) - {s} <= reach[s] for s in group)
        # Every dependency outside the group was emitted before it.
        outside = {d for s in group for d in deps[s] if d in ids} - set(group)
        assert outside <= seen
        seen |= set(group)


def test_a_long_chain_and_many_cycles_stay_linear() -> None:
    size = 20_000
    ids = [f"s{i}" for i in range(size)]
    chain = Ancestry(ids, {s: [ids[i - 1]] if i else [] for i, s in enumerate(ids)})
    assert chain.count(ids[-1]) == size - 1
    assert chain.is_upstream("s0", ids[-1])
    pairs = strongly_connected(ids, {s: [ids[i ^ 1]] for i, s in enumerate(ids)})
    assert len(pairs) == size // 2


def test_every_group_caught_in_a_cycle_is_reported_once() -> None:
    steps = [{"id": f"s{i}", "action": "noop", "depends_on": [f"s{i ^ 1}"]} for i in range(2000)]
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition({"id": "w", "steps": steps}, limits=DefinitionLimits(max_steps=2000))
    messages = [p.message for p in info.value.problems]
    assert len(messages) == 1000
    assert messages[:2] == ["cycle: s0 -> s1 -> s0", "cycle: s2 -> s3 -> s2"]
