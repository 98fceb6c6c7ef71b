"""Bounded YAML loading for every file a user hands the harness (recipes, sweep files, golden-set
manifests): `yaml.safe_load` with limits on size and on what aliases expand to, and a plain 3e-4
read as a number."""
from __future__ import annotations

import re
from typing import Any

import yaml

_FLOAT = re.compile(r"^[-+]?(\.\d+|\d+(\.\d*)?)([eE][-+]?\d+)$")


# bounds on user YAML: a recipe is a few hundred values; an alias bomb ("billion laughs")
# is a few lines whose aliases expand to billions, which every later walk would visit
MAX_YAML_CHARS = 4_000_000
MAX_YAML_VALUES = 100_000


class YAMLTooLarge(yaml.YAMLError):
    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(problem)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Values the node stands for once every alias is expanded, counted without expanding
    (shared nodes are counted from a memo); stops counting past `limit`."""
    memo: dict[int, int] = {}
    order, stack = [], [node]
    while stack:  # iterative: a deep document must not exhaust Python's stack here
        n = stack.pop()
        if id(n) in memo:
            continue
        memo[id(n)] = 1  # also ends a node that contains itself
        order.append(n)
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend(x for kv in n.value for x in kv)
    for n in reversed(order):  # children before parents
        if isinstance(n, yaml.SequenceNode):
            memo[id(n)] = 1 + sum(memo[id(c)] for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            memo[id(n)] = 1 + sum(memo[id(k)] + memo[id(v)] for k, v in n.value)
        memo[id(n)] = min(memo[id(n)], limit + 1)
    return memo[id(node)]


class _Loader(yaml.SafeLoader):
    """SafeLoader reading a plain 3e-4 as the number every ML config means (YAML 1.1 wants a
    dot). A resolver only sees untagged plain scalars: "1e10" or !!str 1e10 stay strings."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """yaml.safe_load, bounded in size and in what its aliases expand to; plain 3e-4 is a
    number."""
    if len(text) > MAX_YAML_CHARS:
        raise YAMLTooLarge(f"the file is larger than {MAX_YAML_CHARS:,} characters")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise YAMLTooLarge(f"its aliases expand to more than {MAX_YAML_VALUES:,} values "
                               "(an alias bomb?)")
        return loader.construct_document(node)
    except RecursionError:
        raise YAMLTooLarge("nested too deeply, or an alias refers to itself") from None
    finally:
        loader.dispose()
