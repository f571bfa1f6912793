"""YAML without surprises: the one loader of pipeline files, bounded in size, nesting and alias expansion.

PyYAML's safe loader builds no arbitrary objects, but it parses a document of any size, recurses once per level of
nesting (a deep document ends in ``RecursionError``), and shares aliased nodes: a few hundred bytes of "billion
laughs" load quickly and become 10^9 values the moment anything walks them (validation, JSON encoding). This loader
refuses such documents before constructing anything, naming the limit (``core.bounds``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from devart.core.bounds import MAX_DEPTH, MAX_YAML_ALIASES, MAX_YAML_BYTES, MAX_YAML_NODES, size
from devart.core.errors import Invalid


class YamlRefused(Invalid):
    """A document is not valid YAML or is past a limit (size, nesting, aliases, expansion); the message says which."""


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, counting aliases and nesting while it composes, so a deep document stops at the limit."""

    def __init__(self, stream: str | bytes, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise YamlRefused(f"{self.source}: more than {MAX_YAML_ALIASES} aliases (line {line}); "
                                  "write the values out or use fewer anchors")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise YamlRefused(f"{self.source}: nested deeper than {MAX_DEPTH} levels (line {line})")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load(data: str | bytes, *, source: str = "<input>") -> Any:
    """The document's value; ``YamlRefused`` for invalid YAML or a document beyond a limit."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_YAML_BYTES:
        raise YamlRefused(f"{source} is {len(raw)} bytes; a YAML document may be at most {size(MAX_YAML_BYTES)}")
    loader = _BoundedLoader(raw, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expansion(node, source, {}, set(), 1)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlRefused(f"{source} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def load_file(path: Path) -> Any:
    """Load a file, refusing one past the size limit before reading it; ``OSError`` if it cannot be read."""
    found = path.stat().st_size
    if found > MAX_YAML_BYTES:
        raise YamlRefused(f"{path.name} is {found} bytes; a YAML document may be at most {size(MAX_YAML_BYTES)}")
    return load(path.read_bytes(), source=path.name)


def _expansion(node: yaml.Node, source: str, memo: dict[int, tuple[int, int]], path: set[int],
               depth: int) -> tuple[int, int]:
    """(nodes, height) of ``node`` with every alias expanded; refuses cycles, depth and size past the limits.

    Memoized per node, so a billion-laughs document costs one visit per distinct node, not one per expanded value.
    """
    key = id(node)
    if key in path:
        raise YamlRefused(f"{source}: an alias refers to a node that contains it (line {node.start_mark.line + 1})")
    if key not in memo:
        if depth > MAX_DEPTH:
            raise YamlRefused(f"{source}: nested deeper than {MAX_DEPTH} levels once aliases are expanded "
                              f"(line {node.start_mark.line + 1})")
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        path.add(key)
        count, height = 1, 1
        for child in children:
            child_count, child_height = _expansion(child, source, memo, path, depth + 1)
            count, height = count + child_count, max(height, child_height + 1)
            if count > MAX_YAML_NODES:
                raise YamlRefused(f"{source}: expands to more than {MAX_YAML_NODES} values once aliases are "
                                  "expanded (a \"billion laughs\" document?)")
        path.discard(key)
        memo[key] = (count, height)
    count, height = memo[key]
    if depth - 1 + height > MAX_DEPTH:
        raise YamlRefused(f"{source}: nested deeper than {MAX_DEPTH} levels once aliases are expanded "
                          f"(line {node.start_mark.line + 1})")
    return count, height
