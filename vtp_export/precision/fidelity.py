"""Fidelity of a reduced-precision graph to the fp32 PyTorch module: does it keep the same tokens, and are the
kept tokens' embeddings the same direction.

The graph runs in onnxruntime (CPU) with its Q/DQ rewrites off: Q/DQ pairs then compute what they state
(quantize, dequantize) instead of being fused into onnxruntime's own integer kernels, and its Q/DQ
propagation cannot push an fp8 Q past a Transpose, which has no fp8 kernel. Where onnxruntime's CPU
kernels lack the graph's types (bf16, almost everywhere), it runs an emulation twin of the graph: every
bf16 tensor held in float32 and rounded to bf16 after the node that makes it (what a GPU kernel does that
accumulates in float32 and stores bf16). The record says which ran.
"""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from vtp_export.errors import PrecisionError
from vtp_export.onnx.inputs import Arrays
from vtp_export.onnx.names import IMAGE_EMBEDS, TEXT_EMBEDS, TOKEN_INDEX
from vtp_export.onnx.sessions import session_options
from vtp_export.precision.agreement import matched_rows, set_overlap
from vtp_export.records.graph import Fidelity, FidelityTarget

# fp16 / bf16 graphs keep the score path float32, so token choices should not flip (issue 13); int8 and fp8
# have no target: their figures are reported.
FIDELITY_TARGETS = {
    "fp16": FidelityTarget(token_overlap_min=0.98, embeds_cosine_min=0.999),
    "bf16": FidelityTarget(token_overlap_min=0.98, embeds_cosine_min=0.999),
}


def fidelity(reference: list[Arrays], outputs: list[Arrays], precision: str, backend: str) -> Fidelity:
    """Per image: the share of the reference's real kept tokens (token_index >= 0) that `outputs` kept too,
    |A ∩ B| / |A|, and the cosine of image_embeds on the tokens both kept (matched by source token); for a
    graph without token_index (text.onnx) the cosine of text_embeds rows. `outputs` are of a `precision` graph
    computed by `backend`; for fp16 / bf16, whether they meet FIDELITY_TARGETS."""
    overlaps, cosines = [], []
    for want, got in zip(reference, outputs):
        if TOKEN_INDEX in want:
            overlaps += [set_overlap(g[None], w[None]) for g, w in zip(got[TOKEN_INDEX], want[TOKEN_INDEX])]
            got_at, want_at = matched_rows(got[TOKEN_INDEX], want[TOKEN_INDEX])
            have, expected = got[IMAGE_EMBEDS][got_at], want[IMAGE_EMBEDS][want_at]
        else:
            have, expected = got[TEXT_EMBEDS], want[TEXT_EMBEDS]
        cosines += row_cosines(have, expected).tolist()
    overlap_min = min(overlaps) if overlaps else None
    cosine_min = min(cosines, default=1.0)
    target = FIDELITY_TARGETS.get(precision)
    meets = None if target is None else (
        (overlap_min is None or overlap_min >= target.token_overlap_min) and cosine_min >= target.embeds_cosine_min)
    return Fidelity(
        precision=precision, backend=backend, samples=len(reference),
        images=len(cosines) if not overlaps else len(overlaps), token_overlap_min=overlap_min,
        token_overlap_mean=float(np.mean(overlaps)) if overlaps else None, embeds_cosine_min=cosine_min,
        embeds_cosine_mean=float(np.mean(cosines or [1.0])), target=target, meets_target=meets,
    )


def measure_fidelity(path: Path, precision: str, inputs: list[Arrays], reference: list[Arrays]) -> Fidelity:
    """fidelity() of the graph at `path` on `inputs` against `reference` (the fp32 module's outputs), with the
    backend that computed it."""
    outputs, backend = graph_outputs(path, inputs)
    return fidelity(reference, outputs, precision, backend)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64).reshape(-1, a.shape[-1]), b.astype(np.float64).reshape(-1, b.shape[-1])
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(norms, np.finfo(np.float64).tiny)


def graph_outputs(path: Path, inputs: list[Arrays]) -> tuple[list[Arrays], str]:
    """The graph's outputs on each input, and what computed them: onnxruntime on the graph, or on its
    emulation twin where onnxruntime cannot run the graph's types."""
    backend = f"onnxruntime {ort.__version__} CPUExecutionProvider, Q/DQ rewrites off"
    reasons = twin_reasons(onnx.load(str(path), load_external_data=False))
    if not reasons:
        return run(path, inputs), backend
    twin = onnx.load(str(path))
    make_executable(twin)
    with tempfile.TemporaryDirectory() as scratch:
        twin_path = Path(scratch) / path.name
        onnx.save(twin, str(twin_path), save_as_external_data=True, location=twin_path.name + ".data")
        del twin
        return run(twin_path, inputs), f"{backend}, emulation twin ({'; '.join(reasons)})"


def run(path: Path, inputs: list[Arrays]) -> list[Arrays]:
    options = session_options(low_memory=True)
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types
        raise PrecisionError(f"onnxruntime cannot run {path.name}: {str(error).splitlines()[0][:300]}") from error
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feeds))) for feeds in inputs]


def twin_reasons(model: onnx.ModelProto) -> list[str]:
    """Why onnxruntime's CPU provider cannot run `model` as it is (nothing: it can)."""
    if TensorProto.BFLOAT16 in value_types(model).values() or any(
            t.data_type == TensorProto.BFLOAT16 for t in model.graph.initializer):
        return ["bf16 tensors held in float32, rounded to bf16 after every node"]
    return []


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value that ONNX type inference resolves."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.output, *inferred.value_info]}


def make_executable(model: onnx.ModelProto) -> None:
    """Rewrite `model` (weights loaded) in place into its emulation twin, which onnxruntime's CPU provider
    runs with the same values up to the emulation the module docstring states."""
    emulate_bf16(model, value_types(model))
    del model.graph.value_info[:]  # types changed; onnxruntime infers them again


def emulate_bf16(model: onnx.ModelProto, types: dict[str, int]) -> None:
    """Hold bf16 values in float32, rounding each to bf16 where it is made (Cast to bf16, Cast back)."""
    graph = model.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.BFLOAT16:
            graph.initializer[index].CopyFrom(as_float32(tensor))
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.t.data_type == TensorProto.BFLOAT16:
                attribute.t.CopyFrom(as_float32(attribute.t))
        nodes.append(node)
        for i, name in enumerate(node.output):
            if types.get(name) != TensorProto.BFLOAT16:
                continue
            exact, rounded = f"{name}/float32", f"{name}/bf16"
            node.output[i] = exact
            if node.op_type == "Cast":  # already rounds to bf16: only back to float32
                rounded = exact
            else:
                nodes.append(helper.make_node("Cast", [exact], [rounded], name=f"{name}/to_bf16",
                                              to=TensorProto.BFLOAT16))
            nodes.append(helper.make_node("Cast", [rounded], [name], name=f"{name}/to_float32", to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)


def as_float32(tensor: TensorProto) -> TensorProto:
    """A bf16 tensor as float32 with the same values (bf16 is float32's upper half: exact)."""
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
