"""Check an IR graph (TVM's JSON serialization, as tuning databases store workloads) for what crashes TVM's reader
(SIGSEGV) instead of making it raise: an object of the wrong class in a field (it stores the object unchecked: an
`ir.IntImm` whose type was an array), a cycle or a chain of references too deep (it recurses until its stack
overflows).

Each field's class comes from TVM's own reflection (its type schema, read through `tvm_ffi.core`'s type lookup, as
the pinned apache-tvm-ffi 0.1.14 has it): a field's object must be None, a plain value (TVM converts and checks
those itself), or of that class or a subclass; arrays and maps are checked element by element. Every reference must
point to a node written before it (TVM writes a node's parts first), which rules out cycles, and lie at most
`MAX_DEPTH` deep. A graph that passes can still be refused by TVM with an error it raises, or crash a later step: a
required field left empty (None) is not checked here. `open_database` reads a folder edited since `tune` wrote it in
a child process first (`record_replay`), where such a crash is caught (a fuzz of 60 fields emptied, 2026-12-08: 43
refused by TVM's reader, 17 loaded, none crashed).
"""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

import tvm  # noqa: F401 (registers TVM's types with TVM-FFI, whose reflection this reads)
from tvm_ffi import core
from tvm_ffi.registry import get_registered_type_keys

__all__ = ["MAX_DEPTH", "graph_problem", "workload_graph"]

#: node types whose data TVM converts with a check of its own (a plain value, not an object)
_VALUES = {"None", "int", "bool", "float", "ffi.String", "ffi.Bytes", "ffi.SmallStr", "ffi.SmallBytes"}
#: schema kinds stored inline in a node's data, not as a node index
_INLINE = {"int", "bool", "float", "DataType"}
#: the deepest chain of references accepted (the bundled MiniLM encoder's kernels reach 39 and its Relax program 17,
#: measured by a probe on 2026-12-07; TVM's reader overflowed its stack on chains of 2,000 to 3,000)
MAX_DEPTH = 1000


def workload_graph(encoded: str) -> dict:
    """The IR graph of a MetaSchedule workload's module: JSON after an 8-byte length, in base64; a ValueError
    where it is not."""
    raw = base64.b64decode(encoded, validate=True)
    try:
        graph = json.loads(raw[8:])
    except RecursionError:  # (JSON nested deeper than Python's parser goes)
        raise ValueError("JSON nested too deep") from None
    if not (isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and type(graph.get("root_index")) is int):
        raise ValueError("not an IR graph")
    return graph


@cache
def _fields(type_key: str) -> dict[str, dict] | None:
    """The type schema of each field of `type_key`'s class and its bases; None for a type TVM does not know."""
    if type_key not in _registered():
        return None
    info, fields = core._lookup_or_register_type_info_from_type_key(type_key), {}
    while info is not None:
        fields.update({f.name: json.loads(f.metadata["type_schema"]) for f in info.fields
                       if "type_schema" in (f.metadata or {})})
        info = info.parent_type_info
    return fields


@cache
def _registered() -> frozenset[str]:
    """The type keys TVM-FFI knows."""
    return frozenset(get_registered_type_keys())


@cache
def _is_a(type_key: str, wanted: str) -> bool:
    """Whether objects of `type_key` are `wanted`s (the class or a subclass)."""
    if type_key == wanted:
        return True
    info = core._lookup_or_register_type_info_from_type_key(type_key)
    return core._lookup_or_register_type_info_from_type_key(wanted).type_index in info.type_ancestors


def graph_problem(graph: dict, root: str = "ir.IRModule") -> str | None:
    """What makes `graph` unsafe for TVM's reader (a node of a type TVM does not know, a reference out of range, an
    object of the wrong class in a field or container), or None; its root must be a `root`."""
    nodes = graph["nodes"]

    def node(index: Any) -> dict | None:
        ok = type(index) is int and 0 <= index < len(nodes) and isinstance(nodes[index], dict)
        return nodes[index] if ok and isinstance(nodes[index].get("type"), str) else None

    def mismatch(schema: dict, index: Any, where: str) -> str | None:
        """Why node `index` cannot be a value of `schema` (a field's or an element's), or None."""
        kind, args, target = schema.get("type"), schema.get("args", []), node(index)
        if target is None:
            return f"{where} refers to node {index!r}, which is not a node"
        got = target["type"]
        if got == "None" or kind in ("Any", None) or got in _VALUES:
            return None
        if kind == "Optional":
            return mismatch(args[0], index, where) if args else None
        if kind in ("ffi.Array", "ffi.Map"):
            if got != kind:
                return f"{where} is of type {got}, not {kind}"
            items = target.get("data")
            if not isinstance(items, list) or (kind == "ffi.Map" and len(items) % 2):
                return f"{where} ({kind}) has no list of items"
            for i, item in enumerate(items):
                arg = args[i % len(args)] if args else {"type": "Any"}
                if arg.get("type") not in _INLINE and (why := mismatch(arg, item, f"{where}[{i}]")):
                    return why
            return None
        if kind in _registered() and got in _registered() and not _is_a(got, kind):
            return f"{where} is of type {got}, not {kind}"
        return None

    if (top := node(graph["root_index"])) is None or top["type"] != root:
        return f"its root is not of type {root}"
    references: list[list[Any]] = []  # each node's references to other nodes
    for index, item in enumerate(nodes):
        if not (isinstance(item, dict) and isinstance(item.get("type"), str)):
            return f"node {index} has no type"
        fields, data = _fields(item["type"]), item.get("data")
        if fields is None and item["type"] not in _VALUES:
            return f"node {index} is of type {item['type']!r}, which TVM does not know"
        references.append(list(data) if item["type"] in ("ffi.Array", "ffi.Map") and isinstance(data, list) else [])
        if fields is None or not isinstance(data, dict):
            continue
        for name, value in data.items():
            schema = fields.get(name)
            if schema is not None and schema.get("type") not in _INLINE:
                references[-1].append(value)
                if why := mismatch(schema, value, f"node {index} ({item['type']}) field {name!r}"):
                    return why
    return _order_problem(nodes, references)


def _order_problem(nodes: list, references: list[list[Any]]) -> str | None:
    """Whether every node refers only to nodes before it, as TVM writes them (a node's parts first), and lies at
    most MAX_DEPTH references deep: TVM's reader follows references recursively, and a cycle or a chain thousands
    deep overflowed its stack (SIGSEGV)."""
    depth = [0] * len(nodes)
    for index, refs in enumerate(references):
        for ref in refs:
            if not (type(ref) is int and 0 <= ref < index):
                return f"node {index} ({nodes[index]['type']}) refers to node {ref!r}, which does not come before it"
            depth[index] = max(depth[index], depth[ref] + 1)
        if depth[index] > MAX_DEPTH:
            return f"node {index} ({nodes[index]['type']}) lies {depth[index]} references deep (at most {MAX_DEPTH})"
    return None
