"""The DCGAN's transposed convolutions rewritten as sub-pixel convolutions, for OpenVINO at bf16.

OpenVINO's CPU plugin keeps a graph's "tail" in f32 at INFERENCE_PRECISION_HINT=bf16: walking back from each
output it stops only at Convolution, FullyConnected, MatMul and a few more, never at a transposed convolution
(ConvolutionBackpropData). Every ConvTranspose of the generator lies behind its last FullyConnected, and in the
step graph the generator's lie on the loss output's tail, so they ran in f32 (brgconv_avx512_f32) while the
convolutions beside them ran on AMX (2-core Xeon with AMX, OpenVINO 2026.4, batch 64: the gf = 64 generator
102 ms per call). Marking them to run bf16 anyway (the plugin's `enforceBF16evenForGraphTail`) made them 3x faster
but crashed the process later (SIGSEGV, several test-suite runs). A plain Convolution is on OpenVINO's list, so
each ConvTranspose(k=5, stride 2, pads 2, output_padding 1) is rewritten here as the same map:

    Conv(k=3, pad 1, 4 x C_out channels) -> DepthToSpace(2, DCR)

Output pixel (2m + a, 2n + b) of the transposed convolution reads input rows m - 1..m + 1 with kernel rows
a + 4 - 2u (u = 0, 1, 2; those outside 0..4 are zero) and the same for columns, so phase (a, b) is a 3x3
convolution whose weights are the ConvTranspose's taps of that parity; the four phases side by side (channel
(2a + b) x C_out + c) and a depth-to-space put each in its place. 36 / 25 of the multiply-adds (the zero taps),
on the AMX kernels. The rewrite is exact up to the order of sums (tested against the original graph).
"""
from __future__ import annotations

import numpy as np

#: the transposed convolution this rewrites (the DCGAN generator's, and the discriminator's input gradient)
SHAPE = {"strides": [2, 2], "pads": [2, 2, 2, 2], "output_padding": [1, 1], "kernel_shape": [5, 5]}


def subpixel_weights(wt: np.ndarray) -> np.ndarray:
    """ConvTranspose weights [C_in, C_out, 5, 5] -> Conv weights [4 C_out, C_in, 3, 3] (see the module's docstring)."""
    cin, cout = wt.shape[:2]
    k = np.zeros((2, 2, cout, cin, 3, 3), np.float32)
    for a in range(2):
        for b in range(2):
            for u in range(3):
                for v in range(3):
                    ky, kx = a + 4 - 2 * u, b + 4 - 2 * v
                    if 0 <= ky < 5 and 0 <= kx < 5:
                        k[a, b, :, :, u, v] = wt[:, :, ky, kx].T
    return k.reshape(4 * cout, cin, 3, 3)


def rewrite(model) -> int:
    """Rewrite every ConvTranspose of SHAPE with constant weights (an initializer, or a Cast of one) in the ONNX
    `model` (a ModelProto, changed in place) as Conv -> DepthToSpace. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    made = {n.output[0]: n for n in g.node if n.output}

    def constant(name: str) -> tuple[np.ndarray, np.dtype] | None:
        """An initializer's values (float32) and the type the node reads them as (a Cast's target, if any)."""
        src, to = made.get(name), None
        if name not in inits and src is not None and src.op_type == "Cast":
            name, to = src.input[0], next(a.i for a in src.attribute if a.name == "to")
        if name not in inits:
            return None
        to = helper.tensor_dtype_to_np_dtype(to if to is not None else inits[name].data_type)
        return numpy_helper.to_array(inits[name]).astype(np.float32), to

    nodes, n = [], 0
    for node in g.node:
        attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weights = constant(node.input[1]) if node.op_type == "ConvTranspose" else None
        if weights is None or group != 1 or any(attrs.get(k) != v for k, v in SHAPE.items()) \
                or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            nodes.append(node)
            continue
        n += 1
        tag = f"subpixel_{n}_{node.output[0]}"
        wt, dtype = weights  # the new weights in the type the node computed in (fp32, or an fp16 export's fp16)
        g.initializer.append(numpy_helper.from_array(subpixel_weights(wt).astype(dtype), f"{tag}_w"))
        inputs = [node.input[0], f"{tag}_w"]
        bias = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            g.initializer.append(numpy_helper.from_array(np.tile(bias[0], 4).astype(bias[1]), f"{tag}_b"))
            inputs.append(f"{tag}_b")
        nodes.append(helper.make_node("Conv", inputs, [f"{tag}_phases"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[1, 1], name=f"{tag}_conv"))
        nodes.append(helper.make_node("DepthToSpace", [f"{tag}_phases"], [node.output[0]], blocksize=2, mode="DCR",
                                      name=f"{tag}_d2s"))
    # what only the rewritten nodes read (their weights' Casts, the old weights and biases) goes too
    while True:
        used = {i for node in nodes for i in node.input} | {o.name for o in g.output}
        kept = [node for node in nodes if node.op_type != "Cast" or node.output[0] in used]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del g.node[:]
    g.node.extend(nodes)
    unused = [i for i in g.initializer if i.name not in used]
    for i in unused:
        g.initializer.remove(i)
    return n
