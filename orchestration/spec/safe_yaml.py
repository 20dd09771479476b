"""Reading a sweep file's YAML: ``yaml.safe_load`` with the limits a file from anyone needs.

:class:`SweepLoader` is PyYAML's ``SafeLoader`` (no tags beyond plain data) that also refuses

* **aliases and anchors** (``&a`` / ``*a``) and merge keys (``<<``): a sweep file never needs them, and
  they are how a few hundred bytes expand into a structure that exhausts time, memory or the stack
  (``description: &s [*s]`` refers to itself; nine levels of ``[*a, *a, ...]`` are 10⁹ nodes);
* **duplicate keys** in one mapping (plain PyYAML keeps the last value silently);
* nesting deeper than :data:`MAX_DEPTH` (sweep files are about five levels deep; the composer and
  everything after it recurse).

With no aliases, the data can be no larger than the text, and :func:`read_yaml` bounds the text to
:data:`MAX_CHARS`. Every refusal is a :class:`~deepsad.errors.ConfigError` of one line naming the
line of the file: ``sweeps/x.yaml: line 7: duplicate key 'name'``.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from deepsad.errors import ConfigError
from orchestration.spec.model import printable

#: The longest sweep file read, in characters (the shipped ones are under 3,000).
MAX_CHARS = 256 * 1024
#: The deepest nesting of mappings and lists (the shipped files nest five levels).
MAX_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"


class RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML that a sweep file may not hold (an alias, a duplicate key, deep nesting)."""


class SweepLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases, anchors, merge keys or duplicate keys, nested at most
    :data:`MAX_DEPTH` deep. Raises :class:`RefusedYAML` (a ``yaml.MarkedYAMLError``) at the node."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise RefusedYAML(problem=f"aliases (*{event.anchor}) are not allowed in a sweep file; "
                              "write the value out", problem_mark=event.start_mark)  # fmt: skip
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise RefusedYAML(problem=f"anchors (&{anchor}) are not allowed in a sweep file; write the "
                              "value out where it is used", problem_mark=event.start_mark)  # fmt: skip
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RefusedYAML(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=event.start_mark)
            node: Node = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Node:
        node: Node = super().compose_mapping_node(anchor)
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise RefusedYAML(problem="merge keys (<<) are not allowed in a sweep file",
                                  problem_mark=key_node.start_mark)  # fmt: skip
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key: the base class refuses it with its own message
            if repeated:
                shown = repr(key) if isinstance(key, str) else str(key)
                raise RefusedYAML(problem=f"duplicate key {shown}", problem_mark=key_node.start_mark)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:
            # PyYAML's own constructors raise these for values its patterns let through: a date
            # such as 2024-13-45, an integer of more digits than Python converts
            kind = str(node.tag).rsplit(":", 1)[-1]
            if "Exceeds the limit" in str(e):
                raise ConstructorError(problem=f"not a valid {kind}: too many digits",
                                       problem_mark=node.start_mark) from e  # fmt: skip
            raise ConstructorError(problem=f"not a valid {kind}: {_one_line(str(e))}",
                                   problem_mark=node.start_mark) from e  # fmt: skip


def read_yaml(text: str, source: str) -> Any:
    """``text`` as plain data (dicts, lists, scalars), read by :class:`SweepLoader`.

    Raises:
        ConfigError: one line — the text is too long, is not YAML, or holds what a sweep file may
            not (aliases, anchors, duplicate keys, deep nesting), prefixed by ``source`` and the line.
    """
    if len(text) > MAX_CHARS:
        raise ConfigError(f"{source}: {len(text):,} characters; a sweep file may have at most {MAX_CHARS:,}")
    loader: SweepLoader | None = None
    try:
        loader = SweepLoader(text)  # checks that every character is printable
        return loader.get_single_data()
    except RefusedYAML as e:
        raise ConfigError(f"{source}: {_where(e, column=False)}{_one_line(e.problem or 'refused')}") from e
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"{source}: {_where(e)}invalid YAML: {_one_line(e.problem or e.context or '')}") from e
    except yaml.reader.ReaderError as e:
        raise ConfigError(f"{source}: character {e.position + 1}: invalid YAML: a special character "
                          f"(#x{e.character if isinstance(e.character, int) else 0:04x}) is not allowed") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(e))}") from e
    except RecursionError as e:  # belt and braces: MAX_DEPTH keeps the composer far from the limit
        raise ConfigError(f"{source}: nested too deeply") from e
    finally:
        if loader is not None:
            loader.dispose()


def _where(e: yaml.MarkedYAMLError, *, column: bool = True) -> str:
    mark = e.problem_mark or e.context_mark
    if mark is None:
        return ""
    return f"line {mark.line + 1}, column {mark.column + 1}: " if column else f"line {mark.line + 1}: "


def _one_line(text: str) -> str:
    return printable(" ".join(str(text).split())) or "unreadable"
