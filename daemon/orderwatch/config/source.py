"""Where each config value came from: the YAML file read once (size-capped, UTF-8, aliases
bounded) with the line of every key, and the collector of `file:line: key: message` problems."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from orderwatch.core.errors import ConfigError, Problem
from orderwatch.core.files import read_capped

MAX_CONFIG = 1024 * 1024
MAX_NODES = 100_000  # values once aliases are expanded: a "billion laughs" file stops here
Loc = tuple[str | int, ...]
_T = typing.TypeVar("_T")


def dotted(loc: Loc) -> str:
    """('webhooks', 0, 'url') -> 'webhooks[0].url'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Collector:
    """Problems so far, and where each key came from (a line of the file, or a variable)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {}
        self.env: dict[Loc, str] = {}  # values set by ORDERWATCH_* overrides -> "env:NAME"
        self.expanded: dict[str, str] = {}  # a ${NAME}'s value -> "${NAME}", for messages
        self.problems: list[Problem] = []

    def origin(self, loc: Loc) -> str | None:
        """'env:NAME' when the value at `loc` (or a parent) came from an override."""
        return nearest(self.env, loc)

    def line_of(self, loc: Loc) -> int | None:
        return nearest(self.lines, loc)

    def add(
        self, loc: Loc, message: str, source: str | None = None, line: int | None = None
    ) -> None:
        source = source or self.origin(loc)
        if source is None:
            source, line = self.source, line or self.line_of(loc)
            if inside := self._overrides_inside(loc):  # a section's check saw them too
                message += f" (with {', '.join(inside)} from the environment)"
        self.problems.append(Problem(source, line, dotted(loc) or None, message))

    def _overrides_inside(self, loc: Loc) -> list[str]:
        """The variables that set keys under `loc` (not the whole config's: too broad)."""
        if not loc:
            return []
        n = len(loc)
        return sorted(
            name.removeprefix("env:")
            for at, name in self.env.items()
            if len(at) > n and at[:n] == loc
        )

    def fail(self, line: int | None, message: str) -> ConfigError:
        return ConfigError([Problem(self.source, line, None, message)])


def nearest(by_loc: dict[Loc, _T], loc: Loc) -> _T | None:
    """The entry for `loc` or its nearest parent that has one."""
    return next((by_loc[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in by_loc), None)


def reason(e: OSError) -> str:
    return e.strerror or str(e)


def read_config(path: Path) -> str:
    try:
        raw = read_capped(path, MAX_CONFIG)
    except OSError as e:
        raise Collector(str(path)).fail(None, f"cannot read config: {reason(e)}") from None
    if len(raw) > MAX_CONFIG:
        raise Collector(str(path)).fail(None, "config is larger than 1 MiB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise Collector(str(path)).fail(line, "config is not UTF-8 text") from None


def parse(text: str, c: Collector) -> Any:
    """The document as Python data; records each key's line in `c.lines`."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks for control characters already
        node = loader.get_single_node()
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            raise c.fail(node.start_mark.line + 1, "the config must be a mapping of sections")
        try:
            count_values(node)  # before anything walks it: aliases can make it huge
        except ValueError as e:
            raise c.fail(None, f"config has {e}") from None
        node_lines(node, (), c)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise c.fail(*_syntax_error(e, text)) from None
    except RecursionError:
        raise c.fail(None, "YAML syntax error: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_value(text: str) -> Any:
    """One YAML value (an override from the environment), bounded as the file is. ValueError
    when it is too large; yaml.YAMLError when it is not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count_values(node)
        return loader.construct_document(node)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        loader.dispose()


def count_values(node: yaml.Node) -> None:
    """ValueError when the document, aliases expanded (keys too), has over MAX_NODES values."""
    seen, todo = 0, [node]
    while todo:
        seen += 1
        if seen > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} values (aliases expanded)")
        n = todo.pop()
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                todo += (k, v)
        elif isinstance(n, yaml.SequenceNode):
            todo += n.value


def _syntax_error(e: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    if isinstance(e, yaml.reader.ReaderError):  # a control character: no mark, a position
        line = text.count("\n", 0, e.position) + 1
        return line, f"YAML syntax error: character {chr(e.character)!r} is not allowed"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    if context and context.startswith("expected"):  # "expected a single document..."
        problem = f"{context}, {problem}"
    return (mark.line + 1 if mark is not None else None), f"YAML syntax error: {problem}"


def node_lines(node: yaml.Node, loc: Loc, c: Collector) -> None:
    """Record each key's line; `node` has passed count_values."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key, line = (*loc, str(k.value)), k.start_mark.line + 1
            if key in c.lines and k.value != "<<":
                c.add(key, f"duplicate key (also at line {c.lines[key]})", line=line)
            c.lines[key] = line  # the last one wins, as in the data
            node_lines(v, key, c)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            c.lines[(*loc, i)] = v.start_mark.line + 1
            node_lines(v, (*loc, i), c)
