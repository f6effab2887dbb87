"""The tensorrt backend: picked by file type, imports no torch, refuses clearly where it cannot run."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from synth import search_inputs
from gcomp.engine.backends import BackendError, backend_for, open_backend
from gcomp.engine.backends.tensorrt_plan import HEADER_FORMAT, pack_engine


def _fake_engines(folder):
    folder.mkdir()
    header = {"format": HEADER_FORMAT, "builder": "tensorrt", "tensorrt_version": "10.0.0",
              "compute_capability": ["8.6"], "metadata": {"size": 32, "zdim": 16, "unroll": 1, "batch": "dynamic"}}
    for name in ("generator.engine", "step.engine"):
        (folder / name).write_bytes(pack_engine(header, b"not a real plan"))
    return folder


def test_engine_folder_selects_tensorrt(tmp_path):
    f = _fake_engines(tmp_path / "e")
    assert backend_for(f) == "tensorrt" and backend_for(f / "step.engine") == "tensorrt"


def test_unrunnable_here_is_one_clear_error(tmp_path):
    f = _fake_engines(tmp_path / "e")
    with pytest.raises(BackendError) as e:
        open_backend(f, "tensorrt", "cuda").activate()
    # no TensorRT, no cuda-python, or no GPU: each says what is missing
    assert any(w in str(e.value) for w in ("TensorRT", "cuda-python", "CUDA error", "compute capability")), str(e.value)
    with pytest.raises(BackendError, match="CUDA GPU"):
        from gcomp.engine.backends.tensorrt_backend import TensorRTBackend

        TensorRTBackend(f, device="cpu").activate()


def test_importing_the_backend_never_imports_torch():
    code = ("import sys\n"
            "class B:\n"
            "    def find_spec(self, n, p=None, t=None):\n"
            "        if n == 'torch' or n.startswith('torch.'): raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, B())\n"
            "import gcomp.engine.backends.tensorrt_backend, gcomp.export.trt as t\n"
            "t.current_compute_capability()\n"
            "assert 'torch' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _gpu_reason():
    try:
        from gcomp.export.trt import current_compute_capability, import_tensorrt

        import_tensorrt()
    except Exception as e:
        return f"no TensorRT: {e}"
    if importlib.util.find_spec("cuda") is None:
        return "no cuda-python"
    if current_compute_capability() is None:
        return "no CUDA GPU visible"
    return None


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(_gpu_reason() is not None, reason=f"TensorRT execution needs a GPU runtime: {_gpu_reason()}")
def test_engine_search_matches_onnxruntime(tiny_ckpt, tmp_path):
    from gcomp.export import export_model
    from gcomp.engine.search import SearchParams

    export_model(tiny_ckpt, tmp_path / "e", trt=True)
    with open_backend(tmp_path / "e", "onnxruntime") as ob, open_backend(tmp_path / "e", "tensorrt", "cuda") as tb:
        z0, y, w = search_inputs(4, ob.info.size, ob.info.zdim)
        np.testing.assert_allclose(tb.generate(z0), ob.generate(z0), atol=1e-3)
        hp = SearchParams(iters=10, lr=3e-4).resolved()
        np.testing.assert_allclose(tb.search(z0, y, w, hp).z, ob.search(z0, y, w, hp).z, atol=1e-2)
