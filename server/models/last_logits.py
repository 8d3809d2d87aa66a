"""Let the graph compute logits for the last positions only.

The exported graphs compute the LM head for every prompt position. For Gemma-3 (vocabulary 262,144)
that head is most of the prefill's work and a [T, 262144] float32 output: a 1,000-token editor prompt
costs ~170 GMAC and 1 GB for logits nobody reads, since only the last position picks the next token.
We add an input `logits_to_keep` (as transformers' models have) and slice the hidden states before
the head; echo with logprobs, which scores every prompt token, asks for all of them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

INPUT = "logits_to_keep"
_HEAD_OPS = frozenset({"MatMul", "MatMulNBits", "Gemm"})


def lm_head(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The MatMul (or Gemm) that turns hidden states into the logits: the node writing `logits`, or
    the one behind a bias Add and dtype Casts on the way there (CodeGen's head: MatMul, Add, Cast)."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get("logits")
    while node is not None and node.op_type in ("Cast", "Identity", "Add"):
        if node.op_type == "Add":
            node = next((producers[i] for i in node.input if i in producers and producers[i].op_type in _HEAD_OPS), None)
        else:
            node = producers.get(node.input[0])
    return node if node is not None and node.op_type in _HEAD_OPS else None


def add_logits_to_keep(onnx_path: Path) -> bool:
    """Rewrite the graph in place (weights in external data stay untouched). Returns False, changing
    nothing, when the logits do not come straight from a MatMul head on the hidden states."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    if any(i.name == INPUT for i in graph.input):
        return True
    # A graph only our runner runs (the fused one, GroupQueryAttention) takes it as a plain input:
    # ONNX Runtime's IOBinding cannot bind an input that has a default, and the runner binds every
    # input to prefill in place. optimum's graph keeps a default, for ORTModelForCausalLM.
    optional = not any(node.op_type == "GroupQueryAttention" for node in graph.node)
    head = lm_head(graph)
    if head is None:
        return False
    hidden = head.input[0]  # [B, T, H]
    graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.INT64, [1]))
    if optional:
        # an input with an initializer is optional: a caller that knows nothing of it (optimum's
        # ORTModelForCausalLM) gets the default, 0, which keeps every position
        graph.initializer.append(helper.make_tensor(INPUT, TensorProto.INT64, [1], [0]))
    graph.initializer.extend(
        [
            helper.make_tensor("logits_to_keep/ends", TensorProto.INT64, [1], [2**62]),
            helper.make_tensor("logits_to_keep/axes", TensorProto.INT64, [1], [1]),
        ]
    )
    sliced = f"{hidden}/last"
    nodes = [
        helper.make_node("Neg", [INPUT], ["logits_to_keep/starts"], name="logits_to_keep/Neg"),
        helper.make_node(
            "Slice",
            [hidden, "logits_to_keep/starts", "logits_to_keep/ends", "logits_to_keep/axes"],
            [sliced],
            name="logits_to_keep/Slice",
        ),
    ]
    # every reader of the hidden states: the head, and the per-block correction of a GGUF head's minimums
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == hidden:
                node.input[i] = sliced
    # keep the node list topologically sorted: the slice goes right before the head
    position = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    onnx.save(model, str(onnx_path))
    return True
