"""YAML read with its marks: the data PyYAML's SafeLoader would build, and where in the file
each value and each mapping key starts, by path (the keys and list indices leading to it, as
pydantic's error `loc` names them), so an error about a value can say file:line:column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

Loc = tuple[str | int, ...]  # a path into the data, as pydantic's error `loc`
Position = tuple[int, int]  # line and column, both counted from 1 as editors do

# The plain tags: other tags on collections (!!set, !!omap, ...) are built by PyYAML whole.
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def position(mark: yaml.Mark | None) -> Position | None:
    """A PyYAML mark (0-based) as an editor's line and column (1-based)."""
    return None if mark is None else (mark.line + 1, mark.column + 1)


@dataclass
class Marked:
    """A YAML document's data and the position of each value (`values`) and of each mapping
    key (`keys`, for an error about the key itself: a field that is not allowed)."""

    data: Any
    values: dict[Loc, Position] = field(default_factory=dict)
    keys: dict[Loc, Position] = field(default_factory=dict)

    def where(self, loc: Loc, *, key: bool = False) -> Position | None:
        """The position of `loc`, or of its nearest enclosing value the file has (a missing
        field is reported where its mapping starts); None only for an empty document."""
        if key and loc in self.keys:
            return self.keys[loc]
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.values:
                return self.values[loc[:n]]
        return None


def load_marked(text: str | bytes) -> Marked:
    """The single YAML document in `text`, with its marks (None and no marks for an empty
    one). Raises yaml.YAMLError as yaml.safe_load would, syntax errors carrying their mark."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marked = Marked(None)
        if node is not None:
            marked.data = _build(loader, node, (), marked, set())
        return marked
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: Node, path: Loc, marked: Marked,
           active: set[int]) -> Any:
    """Build `node` as SafeLoader would, recording where it and everything in it starts.
    `active`: the collections being built around it (by id): an alias back to one of them
    makes a cycle, which no scenario field can take (and pydantic would not end on)."""
    where = position(node.start_mark)
    if where is not None:
        marked.values[path] = where
    if id(node) in active:
        raise yaml.constructor.ConstructorError(
            None, None, "found a recursive alias (a value that contains itself)",
            node.start_mark)
    active = active | {id(node)}
    if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
        _refuse_duplicates(loader, node)
        loader.flatten_mapping(node)  # `<<` merge keys, as construct_mapping does
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _key(loader, node, key_node)
            # Only str and int keys can be part of a pydantic loc; others keep no marks.
            inner = (*path, key) if isinstance(key, str | int) else None
            if inner is not None:
                key_at = position(key_node.start_mark)
                if key_at is not None:
                    marked.keys[inner] = key_at
                result[key] = _build(loader, value_node, inner, marked, active)
            else:
                result[key] = loader.construct_object(value_node, deep=True)
        return result
    if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
        return [_build(loader, item, (*path, i), marked, active)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _key(loader: yaml.SafeLoader, mapping: MappingNode, key_node: Node) -> Any:
    """A mapping key, built; an unhashable one is refused as SafeLoader refuses it."""
    key = loader.construct_object(key_node, deep=True)
    try:
        hash(key)
    except TypeError:
        raise yaml.constructor.ConstructorError(
            "while constructing a mapping", mapping.start_mark,
            "found unhashable key", key_node.start_mark) from None
    return key


def _refuse_duplicates(loader: yaml.SafeLoader, mapping: MappingNode) -> None:
    """A key the mapping itself gives twice is an error: PyYAML would keep the last silently,
    and a second `balancer:` would hide the first without a word. (A key given next to a
    `<<` merge overrides the merged one: that is what merging is for.)"""
    first: dict[Any, yaml.Mark] = {}
    for key_node, _ in mapping.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = _key(loader, mapping, key_node)
        if key in first:
            raise yaml.constructor.ConstructorError(
                f"{key!r} first given", first[key],
                f"found duplicate key {key!r}", key_node.start_mark)
        first[key] = key_node.start_mark
