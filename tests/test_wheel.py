"""The wheel holds every subpackage and the bundled model (a wheel without gcomp/engine/backends/ once
made every `gcomp complete` fail). .ci/run also installs the wheel into a fresh venv without torch and
runs the README's quick start from it."""
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def source_files() -> list[str]:
    """What a commit of this tree would hold: tracked files and new ones git does not ignore."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the source files cannot be listed")
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout: {r.stderr.decode(errors='replace').strip()}")
    return sorted(p for p in r.stdout.decode().split("\0") if p and (ROOT / p).is_file())


def version(dist: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in metadata.version(dist).split(".")[:2] if x.isdigit())
    except metadata.PackageNotFoundError:
        return None


def wheel_tooling() -> None:
    # read from the installed metadata: importing setuptools here would fight pytest's distutils
    if version("pip") is None:
        pytest.skip("pip is not installed")
    if (version("setuptools") or (0,)) < (68,):
        pytest.skip("setuptools >= 68 is not installed (the build backend, per pyproject.toml)")
    if version("setuptools") < (70, 1) and version("wheel") is None:
        pytest.skip("setuptools < 70.1 without the `wheel` package cannot build wheels")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    files = source_files()
    wheel_tooling()
    # Built from a copy of the source files: no build/ or egg-info left in the tree, and no stale
    # build/lib file from an earlier build can slip into the wheel.
    src = tmp_path_factory.mktemp("src") / "gcomp"
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = dist.glob("gcomp-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        return files, names, z.read(ep).decode()


def test_every_package_and_module_is_in_the_wheel(wheel):
    files, names, _ = wheel
    packages = sorted(str(PurePosixPath(f).parent) for f in files
                      if PurePosixPath(f).name == "__init__.py" and PurePosixPath(f).parts[0] != "tests")
    assert "." in packages and "engine/backends" in packages
    for pkg in packages:
        prefix = "gcomp/" if pkg == "." else f"gcomp/{pkg}/"
        assert f"{prefix}__init__.py" in names, f"package {pkg!r} is not in the wheel"
        # every module of the package too
        for f in files:
            p = PurePosixPath(f)
            if f.endswith(".py") and str(p.parent) == pkg and f != "setup.py":
                assert f"gcomp/{f}" in names, f"{f} is not in the wheel"
    assert not [n for n in names if n.startswith(("gcomp/tests/", "gcomp/build/", "gcomp/dist/"))]
    assert "gcomp/setup.py" not in names  # the build script is no module of gcomp


def test_the_gpu_check_is_not_in_the_wheel(wheel):
    """benchmarks/gpu/ (the GPU check, run from a source checkout by benchmarks/gpu_check.sh) has no __init__.py:
    no package, so none of its files is in the wheel, and the old single-file gpu_check module is gone; the
    benchmarks package's own modules still are (test_every_package_and_module_is_in_the_wheel)."""
    files, names, _ = wheel
    gpu = [f for f in files if f.startswith("benchmarks/gpu/")]
    assert "benchmarks/gpu/check.py" in gpu and "benchmarks/gpu/__init__.py" not in gpu
    assert not [n for n in names if n.startswith("gcomp/benchmarks/gpu/")]
    assert not [n for n in names if "gpu_check" in n]  # neither the old module nor gpu_check.sh
    assert {"gcomp/benchmarks/__init__.py", "gcomp/benchmarks/bench.py", "gcomp/benchmarks/flops.py"} <= names


def test_the_bundled_models_are_in_the_wheel(wheel):
    files, names, _ = wheel
    for name in ("default", "small"):  # engine.api.BUNDLED
        model = [f for f in files if f.startswith(f"models/{name}/")]
        assert {PurePosixPath(f).name for f in model} >= {"generator.onnx", "step.onnx", "encoder.onnx", "model.json",
                                                          "MODEL_CARD.md"}, name
        for f in model:
            assert f"gcomp/{f}" in names, f"{f} is not in the wheel"
    assert not [n for n in names if n.startswith("gcomp/models/candidates/")]  # kept in the repository only


def test_the_wheel_has_the_gcomp_command(wheel):
    entry_points = wheel[2]
    assert "[console_scripts]" in entry_points and "gcomp = gcomp.cli.app:main" in entry_points
