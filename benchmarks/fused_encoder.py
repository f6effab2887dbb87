"""Encoder -> generator as one graph, measured against the two calls the 0-iteration path makes (issue #22).

    python -m gcomp.benchmarks.fused_encoder [--model default] [--batch 64] [--rounds 30] [--json OUT]

At 0 iterations with one start, a batch costs the encoder's call and one generator call (engine/batch.py). This
builds the two graphs merged into one (onnx.compose: image, mask -> z -> clip to [-1, 1] -> image, as the engine
clips the encoder's latent), and times, interleaved in rounds so the machine's drift hits both alike, per runtime:
the two calls as the engine makes them (the model's Encoder and its backend's generate()) against one call of the
merged graph, on the same runtime, precision and threads. It reports ms per batch (median over rounds), the ratio,
and the largest difference between the two paths' images. The CPU is named with its flags.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.api import open_model
from .bench import machine_info


def merged(encoder: Path, generator: Path, out: Path) -> Path:
    """encoder.onnx and generator.onnx as one graph: (image, mask) -> gen_image, the latent clipped to [-1, 1]."""
    import onnx
    from onnx import compose, helper, version_converter

    enc, gen = onnx.load(str(encoder)), onnx.load(str(generator))
    clip = helper.make_graph(
        [helper.make_node("Clip", ["z_raw", "lo", "hi"], ["z_clipped"])], "clip",
        [helper.make_tensor_value_info("z_raw", onnx.TensorProto.FLOAT, ["batch", 100])],
        [helper.make_tensor_value_info("z_clipped", onnx.TensorProto.FLOAT, ["batch", 100])],
        initializer=[helper.make_tensor("lo", onnx.TensorProto.FLOAT, [], [-1.0]),
                     helper.make_tensor("hi", onnx.TensorProto.FLOAT, [], [1.0])])
    # graphs exported by different torch versions: one opset (the newer) and one IR version for both
    opset = max(o.version for m in (enc, gen) for o in m.opset_import if o.domain in ("", "ai.onnx"))
    enc, gen = [m if all(o.version == opset for o in m.opset_import if o.domain in ("", "ai.onnx"))
                else version_converter.convert_version(m, opset) for m in (enc, gen)]
    enc.ir_version = gen.ir_version = max(enc.ir_version, gen.ir_version)
    for m in (enc, gen):  # their metadata differ (gcomp_kind, ...): merge_models refuses that; none is needed here
        del m.metadata_props[:]
    clip_m = helper.make_model(clip, opset_imports=enc.opset_import, ir_version=enc.ir_version)
    enc = compose.add_prefix(enc, "enc_", rename_inputs=False, rename_outputs=False)
    gen = compose.add_prefix(gen, "gen_")  # z and image become gen_z and gen_image: the encoder has an input image
    first = compose.merge_models(enc, clip_m, io_map=[("z", "z_raw")])
    both = compose.merge_models(first, gen, io_map=[("z_clipped", "gen_z")])
    onnx.save(both, str(out))
    return out


def run(model: str, backends: list[str], batch: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (batch, 3, 64, 64)).astype(np.float32)
    known = np.ones((batch, 1, 64, 64), np.float32)
    known[:, :, 16:48, 16:48] = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in backends:
            with open_model(model, backend=name) as m:
                enc = m.encoder("encoder")
                fused_path = merged(enc.path, m.source / "generator.onnx", Path(tmp) / "fused.onnx")
                if name == "openvino":
                    import openvino as ov

                    req = ov.Core().compile_model(str(fused_path), "CPU", dict(m.backend.encoder_openvino)) \
                        .create_infer_request()
                    fused = lambda: np.array(req.infer({"image": y, "mask": known})["gen_image"])  # noqa: E731
                else:
                    import onnxruntime as ort

                    so = ort.SessionOptions()
                    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the encoder's
                    sess = ort.InferenceSession(str(fused_path), so, providers=["CPUExecutionProvider"])
                    fused = lambda: sess.run(["gen_image"], {"image": y, "mask": known})[0]  # noqa: E731
                two = lambda: m.backend.generate(enc(y, known))  # noqa: E731
                a, b = two(), fused()  # warm-up (and the comparison)
                t_two, t_fused = [], []
                for _ in range(rounds):
                    for f, ts in ((two, t_two), (fused, t_fused)):
                        t0 = time.perf_counter()
                        f()
                        ts.append((time.perf_counter() - t0) * 1e3)
                ms2, msf = statistics.median(t_two), statistics.median(t_fused)
                rows.append({"backend": name, "settings": m.backend.settings(), "two_calls_ms": round(ms2, 2),
                             "one_graph_ms": round(msf, 2), "speedup": round(ms2 / msf, 3),
                             "max_abs_diff": float(np.abs(a - b).max())})
                print(f"{name}: two calls {ms2:.1f} ms, one graph {msf:.1f} ms ({ms2 / msf:.2f}x), "
                      f"max |diff| {rows[-1]['max_abs_diff']:.2e}", flush=True)
    return {"model": model, "batch": batch, "rounds": rounds, "machine": machine_info(), "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--backend", default="onnxruntime,openvino")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.model, a.backend.split(","), a.batch, a.rounds)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
