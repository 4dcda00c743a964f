"""A parser of CEL's syntax, for the engine's own checks before and after the CEL library.

The CEL library (a Rust crate) recurses once per level of its syntax tree when it compiles
and evaluates, and overflows its stack, killing the process, on a chain of some 12,000
selections or operators (`inputs.a.a.a...`); its bracket nesting stops at about 95 levels.
So every expression is parsed here first, in linear time and with bounded recursion, and
refused before the library sees it when it nests too deep. The tree also tells which
steps an expression names and what its evaluation can cost (`cel_cost`).

Only the shape matters here: the library still decides what is valid CEL, so this parser
accepts a superset of it and keeps no more than the analysis needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Brackets, calls and conditionals nested inside one another: each costs the parser a few
# Python frames, and the library itself refuses past about 95.
MAX_BRACKET_NESTING: Final = 32

COMPREHENSIONS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_PRECEDENCE: Final = {
    "||": 1,
    "&&": 2,
    **dict.fromkeys(("==", "!=", "<", "<=", ">", ">=", "in"), 3),
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
}
_LITERAL_WORDS: Final = frozenset({"true", "false", "null"})

# One token at a time, anchored at the current position; every alternative is linear.
_TOKEN: Final = re.compile(
    r"""(?P<space>[ \t\n\r\f]+|//[^\n]*)"""
    r"""|(?P<str>[bB]?(?:[rR](?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"[^"\n\r]*"|'[^'\n\r]*')"""
    r"""|\"\"\"(?:[^\\"]|\\[\s\S]|"(?!""))*\"\"\"|'''(?:[^\\']|\\[\s\S]|'(?!''))*'''"""
    r"""|"(?:[^"\\\n\r]|\\.)*"|'(?:[^'\\\n\r]|\\.)*'))"""
    r"""|(?P<num>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d+|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)"""
    r"""|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|(?P<op>\|\||&&|==|!=|<=|>=|[<>+\-*/%!?:.,()\[\]{}])"""
)


class CelSyntaxError(ValueError):
    """The text is not an expression this parser understands (or nests too deep)."""


class TooDeep(CelSyntaxError):
    """The expression nests deeper than a limit; `depth` is how deep it got."""

    def __init__(self, message: str, *, depth: int) -> None:
        self.depth = depth
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the syntax tree.

    kind: ident, literal, select, index, call, list, map, unary, binary, ternary,
    comprehension. `text` is the name, operator, function or literal text; `args` the
    children (for select and a method call the target comes first; for a comprehension:
    range, then the bodies, with the variable in `text` and the macro in `macro`).
    """

    kind: str
    text: str = ""
    args: tuple[Node, ...] = ()
    macro: str = ""
    depth: int = 1


def node(kind: str, text: str = "", args: tuple[Node, ...] = (), macro: str = "") -> Node:
    depth = 1 + max((arg.depth for arg in args), default=0)
    return Node(kind, text, args, macro, depth)


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, spaces and comments dropped, ending with ("end", "")."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise CelSyntaxError(f"unexpected character {text[position]!r} at {position}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    tokens.append(("end", ""))
    return tokens


class _Parser:
    def __init__(self, text: str, max_depth: int) -> None:
        self.tokens = tokenize(text)
        self.position = 0
        self.max_depth = max_depth
        self.nesting = 0

    # -- tokens -------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        return self.tokens[min(self.position + ahead, len(self.tokens) - 1)]

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.position += 1
        return token

    def at(self, text: str) -> bool:
        kind, found = self.peek()
        return found == text and kind in ("op", "ident")

    def expect(self, text: str) -> None:
        if not self.at(text):
            raise CelSyntaxError(f"expected {text!r}, found {self.peek()[1] or 'the end'!r}")
        self.position += 1

    def checked(self, built: Node) -> Node:
        if built.depth > self.max_depth:
            raise TooDeep(
                f"nests {built.depth} operations deep, over the limit of {self.max_depth}",
                depth=built.depth,
            )
        return built

    # -- grammar ------------------------------------------------------------------------

    def expression(self) -> Node:
        self.nesting += 1
        if self.nesting > MAX_BRACKET_NESTING:
            raise TooDeep(
                f"brackets, calls and conditionals nest over {MAX_BRACKET_NESTING} deep",
                depth=self.nesting,
            )
        condition = self.binary(1)
        if self.at("?"):
            self.take()
            then = self.binary(1)
            self.expect(":")
            condition = self.checked(node("ternary", "?", (condition, then, self.expression())))
        self.nesting -= 1
        return condition

    def binary(self, lowest: int) -> Node:
        left = self.unary()
        while True:
            kind, operator = self.peek()
            precedence = _PRECEDENCE.get(operator, 0) if kind in ("op", "ident") else 0
            if precedence < lowest:
                return left
            self.take()
            right = self.binary(precedence + 1)
            left = self.checked(node("binary", operator, (left, right)))

    def unary(self) -> Node:
        operators: list[str] = []
        while self.at("!") or self.at("-"):
            operators.append(self.take()[1])
        operand = self.member()
        for operator in reversed(operators):
            operand = self.checked(node("unary", operator, (operand,)))
        return operand

    def member(self) -> Node:
        target = self.primary()
        while True:
            if self.at("."):
                self.take()
                target = self.selection(target)
            elif self.at("["):
                self.take()
                index = self.expression()
                self.expect("]")
                target = self.checked(node("index", "[]", (target, index)))
            elif self.at("{") and target.kind in ("ident", "select"):
                self.take()
                target = self.checked(node("map", "message", self.entries("}", field=True)))
            else:
                return target

    def selection(self, target: Node) -> Node:
        kind, name = self.take()
        if kind != "ident":
            raise CelSyntaxError(f"expected a field name after '.', found {name!r}")
        if not self.at("("):
            return self.checked(node("select", name, (target,)))
        self.take()
        args = self.items(")")
        if name in COMPREHENSIONS and len(args) >= 2 and args[0].kind == "ident":
            bodies = args[1:]
            return self.checked(node("comprehension", args[0].text, (target, *bodies), name))
        return self.checked(node("call", name, (target, *args), "method"))

    def primary(self) -> Node:
        if self.at("."):  # `.name`: a name from the root scope
            self.take()
        kind, text = self.take()
        if kind == "ident" and text in _LITERAL_WORDS:
            return node("literal", text)
        if kind == "ident":
            if self.at("("):
                self.take()
                return self.checked(node("call", text, self.items(")")))
            return node("ident", text)
        if kind in ("num", "str"):
            return node("literal", text)
        if text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if text == "[":
            return self.checked(node("list", "[]", self.items("]")))
        if text == "{":
            return self.checked(node("map", "{}", self.entries("}", field=False)))
        raise CelSyntaxError(f"unexpected {text or 'end of expression'!r}")

    def items(self, closing: str) -> tuple[Node, ...]:
        found: list[Node] = []
        while not self.at(closing):
            found.append(self.expression())
            if not self.at(","):
                break
            self.take()
        self.expect(closing)
        return tuple(found)

    def entries(self, closing: str, *, field: bool) -> tuple[Node, ...]:
        """Keys and values alternating; a message's field names become string literals."""
        found: list[Node] = []
        while not self.at(closing):
            if field:
                kind, name = self.take()
                if kind != "ident":
                    raise CelSyntaxError(f"expected a field name, found {name!r}")
                found.append(node("literal", repr(name)))
            else:
                found.append(self.expression())
            self.expect(":")
            found.append(self.expression())
            if not self.at(","):
                break
            self.take()
        self.expect(closing)
        return tuple(found)


def parse(text: str, *, max_depth: int) -> Node:
    """The syntax tree of `text`; CelSyntaxError if it is not CEL, TooDeep if it nests
    more than `max_depth` levels (or brackets more than MAX_BRACKET_NESTING)."""
    parser = _Parser(text, max_depth)
    tree = parser.expression()
    kind, rest = parser.peek()
    if kind != "end":
        raise CelSyntaxError(f"unexpected {rest!r} after the expression")
    return tree
