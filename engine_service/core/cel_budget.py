"""What evaluating a CEL expression may cost, bounded before it runs.

The CEL library has no cost limit and holds the GIL while it evaluates, so a condition
runs on the engine's event loop from start to end: `[0..299]` nested three deep in
`all(...)` takes 8 s, `l.map(x, x)` is quadratic in `size(l)` (its result is copied at
every element). So the cost of every evaluation is bounded first, from the syntax tree
and the sizes of the data it reads, in *units* of about 0.1 microsecond of the library's
time (measured on the CI machine's cores):

- every node of the tree: 1 unit, each time it is evaluated;
- a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`): its body once per
  element plus ITERATION units per element; `map` and `filter` also copy their result so
  far at each element: COPY units per node copied;
- `+`, comparisons, `in` and function calls: COPY units per node of their operands
  (strings, lists and maps are copied and compared whole);
- the data handed to the library (the parts of `inputs`, `steps` and `values` the
  expression names, see `paths`) and the result it hands back: CONVERT units per node.

The size of a value is bounded by a `Shape`: a list or map from the data has the
measured one; what the expression builds is bounded from its parts (`a + b` has at most
`a`'s and `b`'s elements, a `map(...)` as many as its range). The library's functions
build no other collections (there is no `split`, `range` or string repetition). An
expression whose bound is over the budget is refused at registration when that is known
without data (only literals iterated), and otherwise fails its step at run time, before
the library sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from engine_service.core.cel_syntax import Node

ITERATION: Final = 25
COPY: Final = 5
CONVERT: Final = 25
# A string counts one node per this many characters (and one for itself).
STRING_CHUNK: Final = 32
# The library converts nested data recursively (8,000 nested lists crash it) and so do
# the engine's own JSON helpers (1,000 frames). JSON from gRPC nests at most 100 deep;
# deeper data (an action's output) is refused.
MAX_DATA_DEPTH: Final = 200


@dataclass(frozen=True, slots=True)
class ExpressionLimits:
    """Bounds on every CEL expression: fixed, because they protect the process itself
    (the library's stack and the event loop), at registration and at run time alike."""

    max_length: int = 4096
    # Operations nested in one another (`a.b.c` is 3, `1 + 2 + 3` is 3). The library
    # overflows its stack past about 12,000 (8 MiB stack), so this keeps a wide margin
    # for smaller thread stacks; brackets are bounded by cel_syntax.MAX_BRACKET_NESTING.
    max_depth: int = 100
    # About 5 ms of the library's time (see the module docstring for the units).
    budget: int = 50_000


EXPRESSION_LIMITS: Final = ExpressionLimits()


@dataclass(frozen=True, slots=True)
class Shape:
    """Bounds on a value: `width` elements in its largest list or map (0: a scalar),
    `nodes` JSON nodes in all (keys included), `element` nodes in its largest list
    element (what a comprehension variable is bound to; map keys are one node)."""

    width: int
    nodes: int
    element: int

    def widest(self, other: Shape) -> Shape:
        return Shape(
            max(self.width, other.width),
            max(self.nodes, other.nodes),
            max(self.element, other.element),
        )


SCALAR: Final = Shape(0, 1, 0)
Path = tuple[str, ...]
ShapeOf = Callable[[str, Path], Shape]


class DataTooLarge(ValueError):
    """Data over the node cap, or nested deeper than MAX_DATA_DEPTH."""


# -- what an expression reads ------------------------------------------------------------


def chain(tree: Node) -> tuple[str, Path] | None:
    """`inputs.a["b"].c` as ("inputs", ("a", "b", "c")): a name and constant keys only."""
    keys: list[str] = []
    current = tree
    while True:
        if current.kind == "select":
            keys.append(current.text)
        elif current.kind == "index" and (key := _index_key(current.args[1])) is not None:
            keys.append(key)
        elif current.kind == "ident":
            return current.text, tuple(reversed(keys))
        else:
            return None
        current = current.args[0]


def _index_key(tree: Node) -> str | None:
    return string_key(tree.text) if tree.kind == "literal" else None


def string_key(text: str) -> str | None:
    """A plain quoted string literal's text; None for anything needing unescaping."""
    if len(text) < 2 or text[0] not in "\"'" or "\\" in text:
        return None
    if text[:3] in ('"""', "'''"):
        return None
    return text[1:-1] if text[-1] == text[0] else None


def paths(tree: Node) -> dict[str, frozenset[Path]]:
    """For each free name, the key paths the expression reads below it; () means the
    whole value (`size(inputs)`, `steps[k]`, a macro over it)."""
    found: dict[str, set[Path]] = {}
    pending: list[tuple[Node, frozenset[str]]] = [(tree, frozenset())]
    while pending:
        current, bound = pending.pop()
        named = chain(current)
        if named is not None and named[0] not in bound:
            found.setdefault(named[0], set()).add(named[1])
            continue
        if current.kind == "comprehension":
            pending.append((current.args[0], bound))
            inner = bound | {current.text}
            pending.extend((body, inner) for body in current.args[1:])
        elif current.kind != "ident":
            pending.extend((arg, bound) for arg in current.args)
    return {name: frozenset(found_paths) for name, found_paths in found.items()}


def prune(value: Any, wanted: frozenset[Path]) -> Any:
    """The parts of `value` at `wanted` paths, so only those are handed to the library;
    reading any of them gives the same result, and missing keys stay missing."""
    if not isinstance(value, Mapping):
        return value
    if () in wanted:  # the library takes dicts, not other mappings (a view of the steps)
        return value if isinstance(value, dict) else dict(value)
    by_key: dict[str, set[Path]] = {}
    for path in wanted:
        by_key.setdefault(path[0], set()).add(path[1:])
    return {key: prune(value[key], frozenset(rest)) for key, rest in by_key.items() if key in value}


def follow(value: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


# -- data sizes ---------------------------------------------------------------------------


def measure(value: Any, cap: int, wanted: frozenset[Path] = frozenset({()})) -> dict[Path, Shape]:
    """The shapes of `value` (path ()) and of its parts at `wanted` key paths (missing
    ones left out), in one walk. Iterative and stopping at `cap` nodes (DataTooLarge),
    so measuring costs at most `cap` steps whatever the data."""
    prefixes = {path[:end] for path in wanted for end in range(len(path) + 1)}
    found: dict[Path, Shape] = {}
    seen = 1
    stack = [_Frame(value, ())]
    while True:
        frame = stack[-1]
        key, child = next(frame.children, (None, _END))
        if child is _END:
            stack.pop()
            if frame.path in wanted:
                found[frame.path] = Shape(frame.width, frame.nodes, frame.element)
            if not stack:
                return found
            stack[-1].absorb(frame)
            continue
        seen += 1
        if seen > cap:
            raise DataTooLarge(f"over {cap} nodes")
        if len(stack) >= MAX_DATA_DEPTH:
            raise DataTooLarge(f"nested over {MAX_DATA_DEPTH} deep")
        path = None if frame.path is None or key is None else (*frame.path, key)
        stack.append(_Frame(child, path if path in prefixes else None))


_END: Final = object()


def string_nodes(text: Any) -> int:
    return 1 + len(text) // STRING_CHUNK if isinstance(text, str) else 1


class _Frame:
    """A value being measured: its children still to visit and what is counted so far."""

    __slots__ = ("children", "element", "is_list", "nodes", "path", "width")

    def __init__(self, value: Any, path: Path | None) -> None:
        self.path = path
        self.element = 0
        self.is_list = isinstance(value, list | tuple)
        self.children: Iterator[tuple[str | None, Any]]
        self.width = len(value) if isinstance(value, Mapping) or self.is_list else 0
        self.nodes = string_nodes(value) if isinstance(value, str) else 1
        if isinstance(value, Mapping):
            self.children = iter(value.items())
            self.nodes += sum(string_nodes(key) for key in value)  # keys are nodes too
        elif self.is_list:
            self.children = ((None, item) for item in value)
        else:
            self.children = iter(())

    def absorb(self, child: _Frame) -> None:
        self.nodes += child.nodes
        self.width = max(self.width, child.width)
        self.element = max(self.element, child.element, child.nodes if self.is_list else 0)


# -- the bound -----------------------------------------------------------------------------


def cost(tree: Node, shape_of: ShapeOf) -> int:
    """An upper bound, in units, of evaluating `tree` and converting its result."""
    result, units = _cost(tree, {}, shape_of)
    return units + CONVERT * result.nodes


_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})


def _cost(tree: Node, bound: Mapping[str, Shape], shape_of: ShapeOf) -> tuple[Shape, int]:
    named = chain(tree)
    if named is not None and named[0] in bound and not named[1]:
        return bound[named[0]], 1
    if named is not None and named[0] not in bound:
        return shape_of(*named), 1 + len(named[1])
    if tree.kind == "comprehension":
        return _comprehension(tree, bound, shape_of)
    parts = [_cost(arg, bound, shape_of) for arg in tree.args]
    units = 1 + sum(units for _, units in parts)
    shapes = [shape for shape, _ in parts]
    operand_nodes = sum(shape.nodes for shape in shapes)
    if tree.kind in ("list", "map"):
        return _collection(tree, shapes), units
    if tree.kind == "binary" and tree.text == "+":
        joined = Shape(sum(s.width for s in shapes), operand_nodes, max(s.element for s in shapes))
        return joined, units + COPY * operand_nodes
    if tree.kind == "binary" and tree.text in _COMPARISONS:
        return SCALAR, units + COPY * operand_nodes
    if tree.kind in ("select", "index"):
        return shapes[0], units  # a part of its target: no larger than it
    if tree.kind == "ternary":
        return shapes[1].widest(shapes[2]), units
    if tree.kind == "literal":
        return Shape(0, string_nodes(tree.text), 0), units
    if tree.kind == "call":
        passed = shapes[-1] if tree.text == "dyn" and shapes else SCALAR
        return passed, units + COPY * operand_nodes
    return SCALAR, units


def _collection(tree: Node, shapes: list[Shape]) -> Shape:
    count = len(shapes) if tree.kind == "list" else len(shapes) // 2
    widest = max(shapes, key=lambda s: s.nodes, default=SCALAR)
    element = max((s.element for s in shapes), default=0)
    if tree.kind == "list":
        element = max(element, widest.nodes)
    width = max([count, *(s.width for s in shapes)])
    return Shape(width, 1 + sum(s.nodes for s in shapes), element)


def _comprehension(tree: Node, bound: Mapping[str, Shape], shape_of: ShapeOf) -> tuple[Shape, int]:
    over, units = _cost(tree.args[0], bound, shape_of)
    count = over.width
    variable = Shape(over.width, max(over.element, 1), over.element)
    inner = {**bound, tree.text: variable}
    bodies = [_cost(body, inner, shape_of) for body in tree.args[1:]]
    units += count * (ITERATION + sum(body_units for _, body_units in bodies))
    if tree.macro == "map":
        produced = bodies[-1][0]
        each = max(produced.nodes, 1)
        result = Shape(max(count, produced.width), 1 + count * each, max(each, produced.element))
    elif tree.macro == "filter":
        each = max(over.element, 1)
        result = Shape(count, over.nodes, over.element)
    else:
        return SCALAR, units
    # The result so far is copied at every element: count * count / 2 elements in all.
    return result, units + COPY * (count * count * each) // 2


def static_cost(tree: Node) -> int:
    """The bound with every piece of data empty: what the literals alone cost."""
    return cost(tree, lambda _name, _path: SCALAR)


def iter_nodes(tree: Node) -> Iterator[Node]:
    pending = [tree]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(current.args)


def bounded_activation(
    tree: Node,
    wanted: Mapping[str, frozenset[Path]],
    activation: Mapping[str, Any],
    budget: int,
) -> tuple[int, dict[str, Any]]:
    """The bound of evaluating `tree` over `activation`, and the parts of the activation
    to hand to the library. DataTooLarge once the data alone is over the budget."""
    data: dict[str, Any] = {}
    shapes: dict[str, dict[Path, Shape]] = {}
    units = 0
    for name, name_paths in wanted.items():
        if name not in activation:
            continue  # the library reports the unknown name
        value = prune(activation[name], name_paths)
        cap = max(0, budget - units) // CONVERT + 1
        shapes[name] = measure(value, cap, name_paths | {()})
        units += CONVERT * shapes[name][()].nodes
        data[name] = value
    units += cost(tree, lambda name, path: shapes.get(name, {}).get(path, SCALAR))
    return units, data
