"""`ir_graph_check`: the IR graphs of real kernels pass (for every target family, integer and float layers), and
the edits that would crash TVM's reader, or that it could not read, are named."""

import base64
import json
import subprocess
import sys

import pytest
import torch
import tvm
from transformers import RobertaConfig, RobertaModel
from tvm import te, tirx

from ibert_tvm.ir_graph_check import MAX_DEPTH, graph_problem, workload_graph
from ibert_tvm.model import from_pretrained
from ibert_tvm.relay_passes import pipeline
from ibert_tvm.targets import resolve_target
from test_model import batches

CONFIG = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=40, initializer_range=0.1, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, type_vocab_size=1, pad_token_id=1)


def graph(obj) -> dict:
    return json.loads(tvm.ir.save_json(obj))


@pytest.fixture
def kernel() -> dict:
    """The IR graph of a small module: one PrimFunc with a loop, a block and an addition."""
    a = te.placeholder((4,), "int32", name="A")
    b = te.compute((4,), lambda i: a[i] + 1, name="B")
    return graph(tvm.IRModule({"main": te.create_prim_func([a, b])}))


def first(g: dict, type_key: str) -> tuple[int, dict]:
    return next((i, n) for i, n in enumerate(g["nodes"]) if n["type"] == type_key)


@pytest.mark.parametrize("target", ["llvm", "x86-avx2", "aarch64", "t4"])
def test_every_kernel_of_a_model_passes(target):
    """Each PrimFunc that tuning would store as a workload (integer layer 1, float layer 0), and the whole module."""
    torch.manual_seed(0)
    qm = from_pretrained(RobertaModel(RobertaConfig(**CONFIG), add_pooling_layer=False).eval(),
                         calibration=batches(1, 2, 2, 8, seed=1), float_layers=(0,))
    mod = pipeline.tunable_module(qm.program(1, 8), resolve_target(target).target, integer_only=False)
    kernels = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert len(kernels) > 10
    for func in kernels:
        assert graph_problem(graph(tvm.IRModule({"main": func}))) is None
    assert graph_problem(graph(mod)) is None


def test_a_field_holding_an_object_of_another_class_crashes_tvm_and_is_named(kernel, tmp_path):
    """An integer immediate whose type is an array: TVM's reader dies of SIGSEGV on it (in a child process here),
    the check names the node, the field and both classes."""
    array, _ = first(kernel, "ffi.Array")
    index, node = first(kernel, "ir.IntImm")
    node["data"]["ty"] = array
    assert graph_problem(kernel) == f"node {index} (ir.IntImm) field 'ty' is of type ffi.Array, not ir.Type"
    (tmp_path / "graph.json").write_text(json.dumps(kernel))
    proc = subprocess.run([sys.executable, "-c", "import sys, tvm; tvm.ir.load_json(open(sys.argv[1]).read())",
                           str(tmp_path / "graph.json")], capture_output=True)
    assert proc.returncode == -11  # the reason for the check (if TVM starts to raise instead, it can go)


def test_container_elements_and_kinds_are_checked(kernel):
    """An array element of another class, a map where an array belongs."""
    index, func = first(kernel, "tirx.PrimFunc")
    params = func["data"]["params"]
    kernel["nodes"][params]["data"][0], _ = first(kernel, "ir.PrimType")
    assert graph_problem(kernel) == \
        f"node {index} (tirx.PrimFunc) field 'params'[0] is of type ir.PrimType, not ir.Var"
    kernel["nodes"][params]["data"][0], _ = first(kernel, "ir.Var")
    func["data"]["params"], _ = first(kernel, "ffi.Map")
    assert "field 'params' is of type ffi.Map, not ffi.Array" in graph_problem(kernel)


def test_a_cycle_and_a_chain_too_deep_are_named(kernel):
    """A loop whose body is itself (TVM's reader recursed until its stack overflowed), and an attribute holding
    arrays nested deeper than MAX_DEPTH (at 2,000 to 3,000 levels TVM's reader overflowed its stack too)."""
    loop, node = first(kernel, "tirx.For")
    body = node["data"]["body"]
    node["data"]["body"] = loop
    assert graph_problem(kernel) == f"node {loop} (tirx.For) refers to node {loop}, which does not come before it"
    for levels, problem in ((MAX_DEPTH // 2, None), (MAX_DEPTH, f"lies {MAX_DEPTH + 1} references deep (at most "
                                                            f"{MAX_DEPTH})")):
        nested = []
        for _ in range(levels):
            nested = [nested]
        func = te.create_prim_func([te.placeholder((4,), name="A")]).with_attr("deep", nested)
        found = graph_problem(graph(tvm.IRModule({"main": func})))
        assert found == problem if problem is None else found.endswith(problem)


def test_json_nested_too_deep_for_python_is_a_value_error():
    with pytest.raises(ValueError, match="nested too deep"):
        workload_graph(base64.b64encode(bytes(8) + b"[" * 100_000).decode())


@pytest.mark.parametrize("edit, message", [
    (lambda g: first(g, "ir.IntImm")[1]["data"].update(ty=10 ** 6), "field 'ty' refers to node 1000000, which is "
                                                                      "not a node"),
    (lambda g: first(g, "ir.IntImm")[1].update(type="ir.NoSuchNode"), "of type 'ir.NoSuchNode', which TVM does not "
                                                                       "know"),
    (lambda g: g.update(root_index=first(g, "tirx.PrimFunc")[0]), "its root is not of type ir.IRModule"),
    (lambda g: g["nodes"].__setitem__(3, ["not", "a", "node"]), "node 3 has no type"),
], ids=["reference-out-of-range", "unknown-type", "root-not-a-module", "node-not-an-object"])
def test_graphs_tvm_would_refuse_are_named(kernel, edit, message):
    edit(kernel)
    assert message in graph_problem(kernel)
