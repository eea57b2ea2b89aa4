"""A bounded YAML loader for user files: safe tags only, duplicate keys refused, a node budget.

PyYAML's ``safe_load`` runs no code, but it silently lets a later duplicate key win and it
expands aliases without limit: a few hundred bytes of nested aliases (a "billion laughs" bomb)
describe a structure that every later traversal (validation, JSON dumps, a sweep's grid)
walks for hours. This loader composes the document first, counts the nodes the document
stands for with every alias expanded and refuses it above :data:`MAX_NODES`, refuses duplicate
mapping keys and over-deep nesting, and only then constructs Python values. Errors are
:class:`~mgas_common.errors.UserInputError` naming the file (and the line where there is one).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from mgas_common.errors import UserInputError

MAX_NODES = 100_000
"""Nodes a document may stand for once every alias is expanded (a large sweep spec has ~1,000)."""
MAX_DEPTH = 64
MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (merge keys ``<<`` keep YAML's override rule) and
    nesting deeper than :data:`MAX_DEPTH` (checked while composing, before Python recursion runs out)."""

    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise UserInputError(f"nested deeper than {MAX_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "found an unhashable key", key_node.start_mark) from None
            if key in seen:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       f"duplicate key {key!r} (first on line {seen[key] + 1})",
                                       key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Nodes of the document with aliases expanded (shared nodes counted at every use), stopping
    early past the budget; raises on nesting deeper than :data:`MAX_DEPTH`."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise UserInputError(f"nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:  # a recursive alias: the document is infinite
            raise UserInputError(f"a recursive alias (line {node.start_mark.line + 1})")
        on_path.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                break
        on_path.discard(key)
        sizes[key] = total
        return total

    return size(root, 0)


def load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document from ``text``; ``where`` (a path) prefixes every error."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        total = _expanded_size(root)
        if total > MAX_NODES:
            raise UserInputError(f"{where} stands for more than {MAX_NODES} values once its aliases are expanded "
                                 "(an alias bomb?)")
        return loader.construct_document(root)
    except UserInputError as exc:
        if str(exc).startswith(where):
            raise
        raise UserInputError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "unreadable"
        raise UserInputError(f"{where} is not valid YAML: {' '.join(problem.split())}{line}") from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UserInputError(f"{where} is nested too deeply to be read") from None
    finally:
        if loader is not None:
            loader.dispose()

