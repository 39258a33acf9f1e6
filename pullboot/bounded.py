"""Bounded YAML and JSON parsing for input pullboot does not control.

Every document from user-data, IMDS, the config file or a fetched tree goes
through :func:`load_yaml` or :func:`load_json`, which check its size, its
nesting depth and (YAML) its node count with aliases expanded *before* any
Python object is built. A 500-byte alias bomb ("billion laughs") or 5,000
``[`` is then one clear error naming the input and the limit, instead of a
hang, a MemoryError or a RecursionError traceback. The error class is the
caller's (ConfigError for user-data and config, IdentityError for IMDS, ...).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import yaml

from pullboot.errors import PullbootError


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one document.

    ``max_nodes`` counts scalars and collections with every alias expanded
    (what a consumer walking the result would visit); ``max_aliases`` counts
    alias uses in the text.
    """

    max_bytes: int = 1024 * 1024
    max_depth: int = 64
    max_nodes: int = 100_000
    max_aliases: int = 1_000


DEFAULT: Final = Limits()
HINT: Final = "shorten or flatten the document (anchors and aliases count once per use)"
# JSON strings, so that brackets inside them are not counted as nesting.
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET: Final = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class _Input:
    """The document being checked: its name, the caller's error class, limits and fix."""

    what: str
    error: type[PullbootError]
    limits: Limits
    hint: str

    def refuse(self, problem: str) -> PullbootError:
        return self.error(f"{self.what} {problem}", hint=self.hint)


class DataLoader(yaml.SafeLoader):
    """SafeLoader that builds only JSON's kinds of value: mappings, lists, strings, numbers,
    booleans and null.

    ``!!set``, ``!!binary``, ``!!omap``, ``!!pairs`` and timestamps make Python types
    (set, bytes, date) that nothing downstream expects and that a walker listing the
    types it knows can miss: a ``!!set`` of strings once slipped past the ``!unsafe``
    marking of launch parameters. Timestamps stay the strings they were written as.
    """


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"the YAML tag {node.tag!r} is not allowed here: use plain mappings, "
        "lists, strings, numbers, booleans and null", node.start_mark)


for _tag in ("set", "binary", "omap", "pairs"):
    DataLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_scalar(node)  # type: ignore[arg-type]


DataLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def load_yaml(text: str | bytes, *, what: str, error: type[PullbootError],
              limits: Limits = DEFAULT, hint: str = HINT) -> Any:
    """Parse one YAML document within ``limits``.

    Raises ``error`` (naming ``what`` and the limit, with ``hint`` as the fix)
    when a limit is passed; a document that is not YAML raises
    :class:`yaml.YAMLError` as ``yaml.safe_load`` does, so callers keep their
    own syntax messages.
    """
    doc = _Input(what, error, limits, hint)
    _check_size(text, doc)
    _check_events(text, doc)
    loader = DataLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded(node, doc)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_json(text: str | bytes, *, what: str, error: type[PullbootError],
              limits: Limits = DEFAULT, hint: str = HINT) -> Any:
    """Parse one JSON document within ``limits`` (size and depth; JSON has no aliases).

    Raises ``error`` when a limit is passed and ``ValueError`` (as
    ``json.loads`` does) when the text is not JSON.
    """
    doc = _Input(what, error, limits, hint)
    _check_size(text, doc)
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', body)):
        depth += 1 if match.group() in "[{" else -1
        if depth > limits.max_depth:
            raise doc.refuse(f"nests deeper than {limits.max_depth} levels")
    return json.loads(text)


def _check_size(text: str | bytes, doc: _Input) -> None:
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > doc.limits.max_bytes:
        raise doc.refuse(f"is {size} bytes; the limit is {doc.limits.max_bytes}")


def _check_events(text: str | bytes, doc: _Input) -> None:
    """Depth and alias count from the event stream (PyYAML's parser is not recursive)."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > doc.limits.max_depth:
                raise doc.refuse(f"nests deeper than {doc.limits.max_depth} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > doc.limits.max_aliases:
                raise doc.refuse(f"uses more than {doc.limits.max_aliases} aliases")


def _check_expanded(root: yaml.Node, doc: _Input) -> None:
    """Node count and depth with aliases expanded (shared nodes memoised, so it is fast)."""
    limits = doc.limits
    seen: dict[int, tuple[int, int]] = {}  # id -> (nodes, height); (-1, -1) while open
    too_deep = f"nests deeper than {limits.max_depth} levels (aliases expanded)"

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > limits.max_depth:
            raise doc.refuse(too_deep)
        known = seen.get(id(node))
        if known is not None:
            if known[0] < 0:
                raise doc.refuse("has a recursive alias")
            if depth + known[1] > limits.max_depth:
                raise doc.refuse(too_deep)
            return known
        seen[id(node)] = (-1, -1)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        nodes, height = 1, 0
        for child in children:
            count, sub = walk(child, depth + 1)
            nodes, height = nodes + count, max(height, sub + 1)
            if nodes > limits.max_nodes:
                raise doc.refuse(f"expands to more than {limits.max_nodes} values "
                                 "(aliases expanded)")
        seen[id(node)] = (nodes, height)
        return nodes, height

    walk(root, 0)
