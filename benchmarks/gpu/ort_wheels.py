"""onnxruntime-gpu for the GPU check, from wheels (whole or split into parts) copied to the machine:
installed before the phases run, into a folder put first on their PYTHONPATH (see check.py)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from common import run_logged, tail


def install_ort_wheels(wheel_dir: str, work: Path, env: dict, log) -> dict:
    """Join split wheel parts (NAME.whl.part-aa, NAME.whl.part-ab, ... in name order), pip-install them and any
    whole wheels of the folder into a --target folder put first on PYTHONPATH (it then shadows the image's
    CPU onnxruntime). --no-deps --no-index: nothing is downloaded; the image has onnxruntime's dependencies."""
    src = Path(wheel_dir)
    info: dict = {"installed": False, "dir": str(src)}
    if not src.is_dir():
        info["reason"] = f"--ort-wheel-dir {src} is not a folder"
        return info
    joined = work / "wheels"
    joined.mkdir(exist_ok=True)
    groups: dict[str, list[Path]] = {}
    for p in sorted(src.iterdir()):
        m = re.match(r"(.+)\.part-?[a-z0-9]+$", p.name)
        if m:
            groups.setdefault(m.group(1), []).append(p)
    wheels = [p for p in sorted(src.glob("*.whl"))]
    for name, parts in groups.items():
        target = joined / name
        with target.open("wb") as f:
            for part in sorted(parts):
                f.write(part.read_bytes())
        wheels.append(target)
        log(f"joined {len(parts)} parts into {target.name} ({target.stat().st_size / 2**20:.0f} MiB)")
    if not wheels:
        info["reason"] = f"no wheel or wheel parts in {src}"
        return info
    site = work / "site"
    r = run_logged([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
                    "--target", str(site)] + [str(w) for w in wheels], 240, env)
    info.update({"wheels": [w.name for w in wheels], "pip_exit_code": r["exit_code"], "pip_tail": tail(r["output"], 10)})
    if r["exit_code"] != 0:
        info["reason"] = "pip install failed"
        return info
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + env["PYTHONPATH"].split(os.pathsep))
    # onnxruntime-gpu loads CUDA, cuBLAS and cuDNN by name: those of torch's nvidia-* wheels, when present
    libs = nvidia_lib_dirs()
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        info["ld_library_path"] = libs
    info["installed"] = True
    log(f"installed {', '.join(w.name for w in wheels)} into {site}")
    return info


def nvidia_lib_dirs() -> list[str]:
    """lib folders of the installed nvidia-* wheels (cudnn, cublas, cuda_runtime, ...), without importing torch."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec else []
    return sorted(str(d) for r in roots for d in Path(r).glob("*/lib") if d.is_dir())
