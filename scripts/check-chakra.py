#!/usr/bin/env python3
"""Checks `pangu simulate --chakra` traces against the simulator's task graph, independently of
the Rust encoder.

Usage: python3 scripts/check-chakra.py DIR GRAPH.json

DIR holds pangu.<rank>.et for every rank and comm_groups.json; GRAPH.json is the task graph as
sim/tests/chakra.rs prints it: {"ranks": N, "tasks": [{"id", "device", "stream", "succ",
"kind", ...}], "streams": [[compute ids], [tp ids], [dp ids]] per rank}.

The decoder is Google's protobuf (Debian: python3-protobuf) with message classes built here
from a FileDescriptorProto written by hand from the field numbers of Chakra's
schema/protobuf/et_def.proto (mlcommons/chakra); the length-delimited framing (a varint size
before each message, as Chakra's protolib writes it) is parsed here too. Exits 1 and lists the
differences when the files disagree with the graph; prints a one-line summary when they agree.
"""

import json
import os
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
PKG = "ChakraProtoMsg"

# (name, number, type, label, message or enum type name)
SCALAR_LISTS = [
    ("DoubleList", F.TYPE_DOUBLE),
    ("FloatList", F.TYPE_FLOAT),
    ("Int32List", F.TYPE_INT32),
    ("Int64List", F.TYPE_INT64),
    ("Uint32List", F.TYPE_UINT32),
    ("Uint64List", F.TYPE_UINT64),
    ("Sint32List", F.TYPE_SINT32),
    ("Sint64List", F.TYPE_SINT64),
    ("Fixed32List", F.TYPE_FIXED32),
    ("Fixed64List", F.TYPE_FIXED64),
    ("Sfixed32List", F.TYPE_SFIXED32),
    ("Sfixed64List", F.TYPE_SFIXED64),
    ("BoolList", F.TYPE_BOOL),
    ("StringList", F.TYPE_STRING),
    ("BytesList", F.TYPE_BYTES),
]
# AttributeProto's oneof `value`: fields 3..32, a scalar then its list, in this order.
ATTR_VALUES = [
    ("double_val", F.TYPE_DOUBLE),
    ("float_val", F.TYPE_FLOAT),
    ("int32_val", F.TYPE_INT32),
    ("int64_val", F.TYPE_INT64),
    ("uint32_val", F.TYPE_UINT32),
    ("uint64_val", F.TYPE_UINT64),
    ("sint32_val", F.TYPE_SINT32),
    ("sint64_val", F.TYPE_SINT64),
    ("fixed32_val", F.TYPE_FIXED32),
    ("fixed64_val", F.TYPE_FIXED64),
    ("sfixed32_val", F.TYPE_SFIXED32),
    ("sfixed64_val", F.TYPE_SFIXED64),
    ("bool_val", F.TYPE_BOOL),
    ("string_val", F.TYPE_STRING),
    ("bytes_val", F.TYPE_BYTES),
]
NODE_TYPES = [
    "INVALID_NODE", "METADATA_NODE", "MEM_LOAD_NODE", "MEM_STORE_NODE", "COMP_NODE",
    "COMM_SEND_NODE", "COMM_RECV_NODE", "COMM_COLL_NODE", "STORAGE_NODE", "BATCH_NODE",
    "CHECKPOINT_NODE",
]
COMM_TYPES = [
    "ALL_REDUCE", "REDUCE", "ALL_GATHER", "GATHER", "SCATTER", "BROADCAST", "ALL_TO_ALL",
    "REDUCE_SCATTER", "REDUCE_SCATTER_BLOCK", "BARRIER",
]


def field(msg, name, number, ftype, label=OPT, type_name=None, oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = "." + PKG + "." + type_name
    if oneof is not None:
        f.oneof_index = oneof


def schema():
    fd = descriptor_pb2.FileDescriptorProto(
        name="pangu_check_et_def.proto", package=PKG, syntax="proto3"
    )
    for name, t in SCALAR_LISTS:
        field(fd.message_type.add(name=name), "values", 1, t, REP)
    attr = fd.message_type.add(name="AttributeProto")
    field(attr, "name", 1, F.TYPE_STRING)
    field(attr, "doc_string", 2, F.TYPE_STRING)
    attr.oneof_decl.add(name="value")
    for i, ((name, t), (lname, _)) in enumerate(zip(ATTR_VALUES, SCALAR_LISTS)):
        field(attr, name, 3 + 2 * i, t, oneof=0)
        list_field = name.replace("_val", "_list")
        field(attr, list_field, 4 + 2 * i, F.TYPE_MESSAGE, type_name=lname, oneof=0)
    meta = fd.message_type.add(name="GlobalMetadata")
    field(meta, "version", 1, F.TYPE_STRING)
    field(meta, "attr", 2, F.TYPE_MESSAGE, REP, "AttributeProto")
    for ename, values in (("NodeType", NODE_TYPES), ("CollectiveCommType", COMM_TYPES)):
        e = fd.enum_type.add(name=ename)
        for i, v in enumerate(values):
            e.value.add(name=v, number=i)
    io = fd.message_type.add(name="IOInfo")
    for i, n in enumerate(["values", "shapes", "types"]):
        field(io, n, i + 1, F.TYPE_STRING)
    node = fd.message_type.add(name="Node")
    field(node, "id", 1, F.TYPE_UINT64)
    field(node, "name", 2, F.TYPE_STRING)
    field(node, "type", 3, F.TYPE_ENUM, type_name="NodeType")
    field(node, "ctrl_deps", 4, F.TYPE_UINT64, REP)
    field(node, "data_deps", 5, F.TYPE_UINT64, REP)
    field(node, "start_time_micros", 6, F.TYPE_UINT64)
    field(node, "duration_micros", 7, F.TYPE_UINT64)
    field(node, "inputs", 8, F.TYPE_MESSAGE, type_name="IOInfo")
    field(node, "outputs", 9, F.TYPE_MESSAGE, type_name="IOInfo")
    field(node, "attr", 10, F.TYPE_MESSAGE, REP, "AttributeProto")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)

    def cls(name):
        d = pool.FindMessageTypeByName(PKG + "." + name)
        get = getattr(message_factory, "GetMessageClass", None)
        return get(d) if get else message_factory.MessageFactory(pool).GetPrototype(d)

    return cls("GlobalMetadata"), cls("Node")


def varint(buf, pos):
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def read_file(path, meta_cls, node_cls):
    buf = open(path, "rb").read()
    pos, msgs = 0, []
    while pos < len(buf):
        size, pos = varint(buf, pos)
        if pos + size > len(buf):
            raise ValueError(f"{path}: message of {size} bytes past the end")
        msgs.append(buf[pos : pos + size])
        pos += size
    if not msgs:
        raise ValueError(f"{path}: empty")
    meta = meta_cls()
    meta.ParseFromString(msgs[0])
    nodes = []
    for m in msgs[1:]:
        n = node_cls()
        n.ParseFromString(m)
        nodes.append(n)
    return meta, nodes


def attrs(node):
    out = {}
    for a in node.attr:
        which = a.WhichOneof("value")
        v = getattr(a, which) if which else None
        out[a.name] = list(v.values) if which and which.endswith("_list") else v
    return out


def expected_rank(graph, rank, tasks_of):
    """Per task of the rank: (node id, expected data deps), from the graph alone."""
    mine = tasks_of[rank]
    local = {t: i for i, t in enumerate(mine)}
    deps = [set() for _ in mine]
    tasks = graph["tasks"]
    for t in mine:
        for s in tasks[t]["succ"]:
            if tasks[s]["device"] == rank:
                deps[local[s]].add(local[t])
    for stream in graph["streams"][rank]:
        for a, b in zip(stream, stream[1:]):
            deps[local[b]].add(local[a])
    return local, [sorted(d) for d in deps]


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    folder, graph_path = sys.argv[1], sys.argv[2]
    graph = json.load(open(graph_path))
    meta_cls, node_cls = schema()
    tasks = graph["tasks"]
    n = graph["ranks"]
    tasks_of = [[] for _ in range(n)]
    for t in tasks:
        tasks_of[t["device"]].append(t["id"])
    groups = json.load(open(os.path.join(folder, "comm_groups.json")))
    errors, nodes_seen, ends = [], 0, {}
    pg_by_ranks = {}
    kinds = {"compute": "COMP_NODE", "collective": "COMM_COLL_NODE",
             "send": "COMM_SEND_NODE", "recv": "COMM_RECV_NODE"}
    comm = {"AllReduce": "ALL_REDUCE", "AllGather": "ALL_GATHER",
            "ReduceScatter": "REDUCE_SCATTER", "Broadcast": "BROADCAST"}
    for rank in range(n):
        meta, nodes = read_file(os.path.join(folder, f"pangu.{rank}.et"), meta_cls, node_cls)
        if meta.version != "0.0.4":
            errors.append(f"rank {rank}: metadata version {meta.version!r}")
        local, deps = expected_rank(graph, rank, tasks_of)
        mine = tasks_of[rank]
        if len(nodes) != len(mine):
            errors.append(f"rank {rank}: {len(nodes)} nodes for {len(mine)} tasks")
            continue
        nodes_seen += len(nodes)
        for i, (node, t) in enumerate(zip(nodes, mine)):
            task, a = tasks[t], attrs(node)
            where = f"rank {rank} node {i} ({node.name})"
            ntype = NODE_TYPES[node.type]
            if node.id != i:
                errors.append(f"{where}: id {node.id}")
            if ntype != kinds[task["kind"]]:
                errors.append(f"{where}: {ntype} for a {task['kind']} task")
            if sorted(node.data_deps) != deps[i]:
                errors.append(f"{where}: data deps {list(node.data_deps)} != {deps[i]}")
            if a.get("is_cpu_op") is not False:
                errors.append(f"{where}: is_cpu_op {a.get('is_cpu_op')}")
            if task["kind"] == "compute":
                if node.duration_micros != (task["ns"] + 500) // 1000:
                    errors.append(f"{where}: {node.duration_micros} us for {task['ns']} ns")
                if task["flops"] > 0 and a.get("num_ops") != round(task["flops"]):
                    errors.append(f"{where}: num_ops {a.get('num_ops')} for {task['flops']}")
            elif task["kind"] == "collective":
                if COMM_TYPES[a["comm_type"]] != comm[task["collective"]]:
                    errors.append(f"{where}: comm_type {a['comm_type']}")
                if a["comm_size"] != round(task["bytes"]):
                    errors.append(f"{where}: comm_size {a['comm_size']} for {task['bytes']}")
                if a["pg_ranks"] != task["ranks"] or groups.get(a["pg_name"]) != task["ranks"]:
                    errors.append(f"{where}: group {a['pg_name']} {a['pg_ranks']}")
                key = tuple(task["ranks"])
                if pg_by_ranks.setdefault(key, a["pg_name"]) != a["pg_name"]:
                    errors.append(f"{where}: group {key} named twice")
            else:
                src, dst = a["comm_src"], a["comm_dst"]
                if (task["kind"] == "send") != (src == rank) or (dst == rank) == (src == rank):
                    errors.append(f"{where}: src {src} dst {dst}")
                ends[t] = (src, dst, a["comm_tag"], a["comm_size"])
    if len(set(pg_by_ranks.values())) != len(pg_by_ranks):
        errors.append("two groups share a pg_name")
    # Every send -> receive edge of the graph: both ends name the same transfer.
    pairs = 0
    for t in tasks:
        if t["kind"] != "send":
            continue
        recv = [s for s in t["succ"] if tasks[s]["kind"] == "recv"]
        if len(recv) != 1 or ends.get(t["id"]) != ends.get(recv[0]):
            errors.append(f"send task {t['id']}: {ends.get(t['id'])} vs receive {recv}")
            continue
        src, dst, _, size = ends[t["id"]]
        if (src, dst, size) != (t["device"], t["dst"], round(t["bytes"])):
            errors.append(f"send task {t['id']}: {ends[t['id']]}")
        pairs += 1
    if len(set(ends.values())) != pairs:
        errors.append("a (src, dst, tag) names two transfers")
    for e in errors[:40]:
        print(e, file=sys.stderr)
    if errors:
        print(f"chakra check: {len(errors)} difference(s)", file=sys.stderr)
        return 1
    print(f"chakra check: {n} files, {nodes_seen} nodes, {pairs} send/receive pairs, "
          f"{len(pg_by_ranks)} groups: as the task graph says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
