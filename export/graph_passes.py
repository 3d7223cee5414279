"""Rewrites of an exported ONNX graph that keep every result bit for bit.

`scale_queries_first`: attention written as `softmax(Q K^T / sqrt(d))` exports as MatMul -> Div.
OpenVINO's CPU plugin moves that scalar Div in front of the MatMul, onto the keys: in the
caption's step graph the keys are the cross-attention cache (577 image tokens a row, each of the
12 layers), so every token multiplied the whole cache before reading it again (a third of a
bf16 step at 32 rows, bench profile). With the scale on the queries instead (one token a row),
nothing is left to move. Where the divisor is a power of two (sqrt(64) = 8 for 64-wide heads),
`(Q / 8) K^T` equals `(Q K^T) / 8` exactly in floating point: scaling by a power of two is exact
and commutes with every rounding of the products and sums (short of subnormals), so the graph's
results do not change (checked bit for bit in ONNX Runtime by the tests).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _scalar_constants(graph) -> dict[str, np.ndarray]:
    """Graph values that are constant one-element tensors stored inline, by name."""
    from onnx import TensorProto, numpy_helper

    found = {}
    tensors = [(t.name, t) for t in graph.initializer if t.data_location != TensorProto.EXTERNAL]
    tensors += [(n.output[0], n.attribute[0].t) for n in graph.node
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"]
    for name, tensor in tensors:
        if int(np.prod(tensor.dims, dtype=np.int64)) == 1:
            found[name] = numpy_helper.to_array(tensor).reshape(())
    return found


def _power_of_two(value: np.ndarray) -> bool:
    return value.dtype.kind == "f" and value > 0 and math.isfinite(value) and math.frexp(float(value))[0] == 0.5


def scale_queries_first(model) -> int:
    """In `model` (an onnx.ModelProto, changed in place), every `Div(MatMul(A, B), c)` whose
    MatMul output has no other reader and whose `c` is a positive power of two becomes
    `MatMul(Mul(A, 1 / c), B)`; returns how many were rewritten. Divisors that are not powers of
    two are left alone (there the two orders round differently)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    scalars = _scalar_constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    readers = _readers(graph)
    moved, divisors = 0, set()
    for div in [n for n in graph.node if n.op_type == "Div"]:
        divisor = scalars.get(div.input[1])
        matmul = producer.get(div.input[0])
        if (divisor is None or not _power_of_two(divisor) or matmul is None or matmul.op_type != "MatMul"
                or readers.get(matmul.output[0]) != 1):
            continue
        name = f"{div.name or div.output[0]}/on_query"
        graph.initializer.append(numpy_helper.from_array(np.asarray(1 / divisor, dtype=divisor.dtype), f"{name}/scale"))
        scaled = helper.make_node("Mul", [matmul.input[0], f"{name}/scale"], [f"{name}/output"], name=name)
        graph.node.insert(list(graph.node).index(matmul), scaled)
        matmul.input[0] = scaled.output[0]
        matmul.output[0] = div.output[0]  # the MatMul now writes what the Div wrote
        graph.node.remove(div)
        divisors.add(div.input[1])
        moved += 1
    _drop_unread(graph, divisors)
    return moved


def _readers(graph) -> dict[str, int]:
    """How many nodes (those of sub-graphs too: If, Loop) and graph outputs read each value."""
    from onnx import AttributeProto

    counts: dict[str, int] = {}

    def walk(g):
        for node in g.node:
            for name in node.input:
                counts[name] = counts.get(name, 0) + 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
                    walk(sub)
        for out in g.output:
            counts[out.name] = counts.get(out.name, 0) + 1

    walk(graph)
    return counts


def _drop_unread(graph, names: set[str]) -> None:
    """The constants `names` (the moved divisors), where nothing reads them any more."""
    unread = {n for n in names if not _readers(graph).get(n)}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in unread]:
        graph.node.remove(node)
    keep = [t for t in graph.initializer if t.name not in unread]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def scale_queries_first_file(path: str | Path) -> int:
    """`scale_queries_first` on an ONNX file in place (its weights stay where they are)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    moved = scale_queries_first(model)
    if moved:
        onnx.save_model(model, str(path))
    return moved
