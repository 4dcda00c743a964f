"""Dependency-graph algorithms over step ids.

A graph is given as the step ids in declaration order plus, for each id, the ids it depends
on. Every function is deterministic: wherever several answers are possible, declaration
order decides, so the same definition always yields the same plan. Dependencies on ids
that are not declared are ignored here; reporting them is the validator's job.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence


class CycleError(ValueError):
    """The graph has a cycle, so it has no topological order (a caller's bug: validate first)."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__("cycle: " + " -> ".join(self.cycle))


def _known_dependencies(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Each id's declared dependencies, unknown ids dropped and duplicates removed."""
    known = set(ids)
    return {
        step_id: list(dict.fromkeys(d for d in deps.get(step_id, ()) if d in known))
        for step_id in ids
    }


def topological_order(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm; among ready steps the earliest declared goes first.

    The tie-break makes the order a pure function of the definition, and an input that is
    already topologically ordered comes back unchanged.
    """
    position = {step_id: index for index, step_id in enumerate(ids)}
    known = _known_dependencies(ids, deps)
    waiting = {step_id: len(known[step_id]) for step_id in ids}
    dependents: dict[str, list[str]] = {step_id: [] for step_id in ids}
    for step_id in ids:
        for dependency in known[step_id]:
            dependents[dependency].append(step_id)
    ready = [position[step_id] for step_id in ids if waiting[step_id] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        step_id = ids[heapq.heappop(ready)]
        order.append(step_id)
        for dependent in dependents[step_id]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) < len(ids):
        raise CycleError(find_cycle(ids, deps) or ())
    return order


def find_cycle(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a path in execution direction, e.g. ["a", "b", "a"], or None.

    `x -> y` in the path means y depends on x, as a connection `x -> y` would. The path
    starts at the earliest declared member so the message is stable.
    """
    known = _known_dependencies(ids, deps)
    state: dict[str, int] = {}  # 1: on the current DFS path, 2: finished
    for root in ids:
        if root in state:
            continue
        found = _cycle_from(root, known, state)
        if found is not None:
            return _rotate_to_earliest(found, {s: i for i, s in enumerate(ids)})
    return None


def _cycle_from(
    root: str, known: Mapping[str, Sequence[str]], state: dict[str, int]
) -> list[str] | None:
    """Iterative DFS along dependency edges (no recursion limit on long chains)."""
    path: list[str] = [root]
    pending: list[list[str]] = [list(reversed(known[root]))]
    state[root] = 1
    while path:
        if not pending[-1]:
            state[path.pop()] = 2
            pending.pop()
            continue
        nxt = pending[-1].pop()
        if state.get(nxt) == 1:
            # path[i:] walks dependencies; reversed, it walks execution order.
            loop = path[path.index(nxt) :]
            return [*reversed(loop), loop[-1]]
        if nxt not in state:
            state[nxt] = 1
            path.append(nxt)
            pending.append(list(reversed(known[nxt])))
    return None


def _rotate_to_earliest(cycle: list[str], position: Mapping[str, int]) -> list[str]:
    members = cycle[:-1]
    start = min(range(len(members)), key=lambda i: position[members[i]])
    rotated = members[start:] + members[:start]
    return [*rotated, rotated[0]]


def stages(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Layers of steps that could run in parallel: a step sits one layer after its latest
    dependency. Within a layer, declaration order. Raises CycleError on a cycle."""
    known = _known_dependencies(ids, deps)
    level: dict[str, int] = {}
    for step_id in topological_order(ids, deps):
        level[step_id] = 1 + max((level[d] for d in known[step_id]), default=-1)
    layers: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for step_id in ids:
        layers[level[step_id]].append(step_id)
    return layers


def upstream(step_id: str, deps: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Every step `step_id` transitively depends on (not itself, unless on a cycle).

    A step may only read the output of its upstream steps: anything else may not have run.
    Safe on cyclic graphs, so validation can report every problem in one pass.
    """
    seen: set[str] = set()
    pending = list(deps.get(step_id, ()))
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(deps.get(current, ()))
    return frozenset(seen)


def upstream_sets(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]]
) -> dict[str, frozenset[str]]:
    """`upstream` for every step at once, in one pass over a topological order.

    Raises CycleError on a cycle (use `upstream` per step there).
    """
    known = _known_dependencies(ids, deps)
    result: dict[str, frozenset[str]] = {}
    for step_id in topological_order(ids, deps):
        ancestors: set[str] = set(known[step_id])
        for dependency in known[step_id]:
            ancestors |= result[dependency]
        result[step_id] = frozenset(ancestors)
    return result


def strongly_connected(ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The groups of steps that reach one another (Tarjan's algorithm, iterative): each
    group after every group it depends on; members in declaration order. Linear in the
    graph, where finding cycles one by one is quadratic on many of them."""
    known = _known_dependencies(ids, deps)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    position = {step_id: i for i, step_id in enumerate(ids)}
    for root in ids:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = known[node]
            if edge < len(targets):
                work.append((node, edge + 1))
                target = targets[edge]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:  # back in the caller: pass the lowest index reached up
                caller = work[-1][0]
                low[caller] = min(low[caller], low[node])
            if low[node] == index[node]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group, key=position.__getitem__))
    return groups


class Ancestry:
    """Which steps are upstream of which, for every step at once: one bit per step, a
    mask of its ancestors per group of `strongly_connected` steps. Linear in the graph
    plus one OR of masks per edge; safe on cycles (a step on one is its own ancestor,
    as in `upstream`)."""

    def __init__(self, ids: Sequence[str], deps: Mapping[str, Sequence[str]]) -> None:
        self._ids = list(ids)
        self._bit = {step_id: 1 << i for i, step_id in enumerate(self._ids)}
        known = _known_dependencies(self._ids, deps)
        self._masks: dict[str, int] = {}
        for group in strongly_connected(self._ids, known):
            members = 0
            for step_id in group:
                members |= self._bit[step_id]
            mask = 0
            for step_id in group:
                for dependency in known[step_id]:
                    mask |= self._masks.get(dependency, 0) | self._bit[dependency]
            cyclic = len(group) > 1 or group[0] in known[group[0]]
            for step_id in group:
                self._masks[step_id] = mask | members if cyclic else mask

    def is_upstream(self, candidate: str, of: str) -> bool:
        return bool(self._masks.get(of, 0) & self._bit.get(candidate, 0))

    def upstream(self, of: str, *, with_self: bool = False) -> list[str]:
        """`upstream(of)` in declaration order (with `of` itself if `with_self`)."""
        mask = self._mask(of, with_self)
        found: list[str] = []
        while mask:
            lowest = mask & -mask
            found.append(self._ids[lowest.bit_length() - 1])
            mask ^= lowest
        return found

    def count(self, of: str, *, with_self: bool = False) -> int:
        return self._mask(of, with_self).bit_count()

    def _mask(self, of: str, with_self: bool) -> int:
        mask = self._masks.get(of, 0)
        return mask | self._bit.get(of, 0) if with_self else mask
