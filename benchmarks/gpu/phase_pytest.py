"""Phase pytest of the GPU check: `pytest -m gpu`, each test's outcome, each skip classified (see check.py)."""
from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

from common import ROOT, run_logged, tail

# A skip for one of these reasons is a missing package, which the issue allows; any other skip is flagged.
ALLOWED_SKIP = re.compile(r"onnxruntime-gpu|TensorRT|tensorrt|cuda-python|not installed|could not import|"
                          r"No module named|optional extra", re.I)


def phase_pytest(cfg: dict) -> dict:
    work, out = Path(cfg["work"]), Path(cfg["out"])
    xml = work / "pytest-gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *shlex.split(cfg.get("pytest_args") or ""), "tests"]
    left = cfg["phase_deadline"] - time.time()
    r = run_logged(cmd, left, dict(os.environ), cwd=ROOT)
    (out / "pytest_gpu.log").write_text(tail(r["output"], 2000) + "\n")
    res = {"command": " ".join(cmd[2:]).replace(str(work), "$WORK"), "exit_code": r["exit_code"], "timed_out": r["timed_out"],
           "seconds": round(r["seconds"], 1), "log": "pytest_gpu.log", "passed": 0, "failed": 0, "errors": 0,
           "skipped": 0, "tests": [], "skips": [], "failures": []}
    if xml.exists():
        import xml.etree.ElementTree as ET

        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            kids = {c.tag: c for c in case}
            if "skipped" in kids:
                # A module-level skip's message is just "collection skipped"; its reason is in the element's text.
                reason = " ".join(filter(None, [kids["skipped"].get("message", ""), (kids["skipped"].text or "").strip()]))
                res["skipped"] += 1
                res["skips"].append({"test": name, "reason": reason, "allowed": bool(ALLOWED_SKIP.search(reason))})
                outcome = "skipped"
            elif "failure" in kids or "error" in kids:
                kind = "failure" if "failure" in kids else "error"
                res["failed" if kind == "failure" else "errors"] += 1
                res["failures"].append({"test": name, "kind": kind, "message": (kids[kind].get("message") or "")[:500]})
                outcome = kind
            else:
                res["passed"] += 1
                outcome = "passed"
            res["tests"].append({"test": name, "outcome": outcome, "seconds": float(case.get("time") or 0)})
    m = re.search(r"(\d+) deselected", r["output"])
    res["deselected"] = int(m.group(1)) if m else 0
    unexpected = [s for s in res["skips"] if not s["allowed"]]
    res["unexpected_skips"] = len(unexpected)
    # On a GPU: every test ran, or was skipped for a missing package. A dry run on CPU skips for "no GPU".
    res["ok"] = (r["exit_code"] in (0, 5) and not r["timed_out"] and res["failed"] == 0 and res["errors"] == 0
                 and (cfg["dry"] or (not unexpected and res["passed"] > 0)))
    return {"pytest": res}
