"""The parts point one way, the runtime never loads torch, and the seed's search settings have one source.

Arrows (../shared/DESIGN.md §8): cli -> engine, export, train, benchmarks; export -> train; benchmarks ->
engine, export, train; engine -> train only inside the torch backend, and only lazily (inside functions).
Nothing points at cli/. engine/ is the leaf the others build on: export (the file formats and names the
runtime reads, the seed's settings) and train (mask kinds, search settings for the reference loop) import
its torch-free modules; that is the one arrow this test allows beyond §8's list (see ALLOWED).
"""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository root is the `gcomp` package
PARTS = ("cli", "engine", "export", "train", "benchmarks")
# part -> parts it may import at module level and inside functions
ALLOWED = {
    "cli": {"engine", "export", "train", "benchmarks"},
    "export": {"train", "engine"},
    "train": {"engine"},
    "benchmarks": {"engine", "export", "train"},
    "engine": set(),
}
TORCH_BACKEND = Path("engine/backends/torch_backend.py")


def _sources():
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            yield part, path.relative_to(ROOT)


def _imports(rel: Path):
    """(gcomp part imported or None, top-level module name, at module level?) for each import in the file."""
    tree = ast.parse((ROOT / rel).read_text(), str(rel))
    package = ["gcomp", *rel.parent.parts]
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` or try/except at module level count too
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            part = parts[1] if parts[0] == "gcomp" and len(parts) > 1 and parts[1] in PARTS else None
            yield part, parts[0], id(node) in top_level


def test_parts_import_only_along_the_arrows():
    wrong = []
    for part, rel in _sources():
        for target, _, top in _imports(rel):
            if target is None or target == part:
                continue
            if part == "engine" and target == "train" and rel == TORCH_BACKEND and not top:
                continue  # the torch backend loads train/ (models, the reference, the step module) when activated
            if target not in ALLOWED[part]:
                wrong.append(f"{rel}: {part} -> {target}{'' if top else ' (inside a function)'}")
    assert not wrong, "imports against the arrows:\n" + "\n".join(wrong)


def test_no_torch_at_import_time_in_the_runtime():
    wrong = [f"{rel}" for part, rel in _sources() if part == "engine" and rel != TORCH_BACKEND
             for _, top_module, top in _imports(rel) if top_module == "torch"]
    wrong += [f"{TORCH_BACKEND} (module level)" for _, m, top in _imports(TORCH_BACKEND) if m == "torch" and top]
    assert not wrong, "torch imported by the runtime: " + ", ".join(wrong)


@pytest.mark.parametrize("part", ["export", "engine"])
def test_no_import_cycles_between_modules(part):
    """Inside export/ and engine/ (engine/backends/ counted as one module), at module level or inside functions: the
    API opens the local driver, and the driver runs on an open backend and the settings the API resolved."""
    graph: dict[str, set[str]] = {}
    for p, rel in _sources():
        if p == part:
            mod = rel.parts[1] if len(rel.parts) > 2 else rel.stem  # a subpackage is one module
            graph.setdefault(mod, set()).update(n for t, n in _imports_full(rel) if t == part and n != mod)
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError(f"import cycle in {part}/: {' -> '.join(stack[stack.index(m):] + [m])}")
        if m in seen:
            return
        stack.append(m)
        for n in graph.get(m, ()):
            visit(n)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)


def _imports_full(rel: Path):
    """(part, module file stem within that part) for each gcomp import."""
    tree = ast.parse((ROOT / rel).read_text(), str(rel))
    package = ["gcomp", *rel.parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            names = (base + node.module.split(".")) if node.module else None
            cands = [names] if names else [base + [a.name] for a in node.names]
            for parts in cands:
                if len(parts) > 2 and parts[1] in PARTS:
                    yield parts[1], parts[2]


# -- the seed's search settings: literal numbers in one module only -----------------------------------
SETTINGS = {"iters", "lr", "momentum", "lam", "patience"}
# the modules that run or record a search with default settings (benchmarks/gpu/ sets its own, explicitly)
SEARCH_USERS = ("engine", "export", "train/reference.py", "cli/complete_cmd.py", "cli/eval_cmd.py",
                "benchmarks/bench.py", "benchmarks/default_model.py", "benchmarks/sweep.py")


def _numeric(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def test_search_defaults_are_literal_numbers_in_one_module():
    wrong = []
    for part, rel in _sources():
        if rel == Path("engine/search.py") or not any(str(rel).startswith(u) for u in SEARCH_USERS):
            continue
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.keyword) and node.arg in SETTINGS and _numeric(node.value):
                wrong.append(f"{rel}:{node.value.lineno}: {node.arg}={node.value.value}")
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value in SETTINGS and _numeric(v):
                        wrong.append(f"{rel}:{v.lineno}: {k.value!r}: {v.value}")
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Option" and node.args:
                flags = [a.value for a in node.args[1:] if isinstance(a, ast.Constant)]
                if any(f.lstrip("-").replace("-", "_") in SETTINGS | {"early_stop"} for f in flags) \
                        and not (isinstance(node.args[0], ast.Constant) and node.args[0].value is None):
                    wrong.append(f"{rel}:{node.lineno}: CLI option {flags[0]} has a default of its own")
    assert not wrong, "search settings written outside engine/search.py:\n" + "\n".join(wrong)


def test_the_seeds_settings_reach_the_metadata_and_the_cli_from_search_py():
    from gcomp.engine.search import SEED, SearchParams
    from gcomp.export.metadata import SEED_DEFAULTS

    assert SEED_DEFAULTS == {k: SEED[k] for k in ("iters", "lr", "momentum", "lam")}
    assert SearchParams.seed().as_dict()["lr"] == SEED["lr"]


# -- the runtime never loads torch, with torch installed ---------------------------------------------
def test_gcomp_complete_on_the_bundled_model_never_loads_torch(tmp_path):
    """torch IS installed here; an import hook fails the process on any attempt to import it. The hook raises
    a RuntimeError (not an ImportError), so no `except ImportError` on the way can swallow it."""
    pytest.importorskip("torch")  # the point is an environment where torch is importable
    from synth import make_faces

    make_faces(tmp_path / "in", n=2, size=64)
    code = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise RuntimeError(f"the runtime tried to import {{name}}")
                return None

        sys.meta_path.insert(0, NoTorch())
        sys.argv = ["gcomp", "complete", {str(tmp_path / "in")!r}, {str(tmp_path / "out")!r}, "--iters", "2",
                    "--no-progress"]
        from gcomp.cli.app import app
        try:
            app()
        except SystemExit as e:
            assert not e.code, e.code
        assert "torch" not in sys.modules
        print("NO TORCH")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "NO TORCH" in r.stdout, r.stdout + r.stderr
    assert "done 2" in r.stdout
