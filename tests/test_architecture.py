"""The package layout a newcomer relies on: layers import only downward, stages share a toolkit and
never each other, the method (bismap/method) apart from the generic engine."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bismap"
STAGES = sorted(p for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


# What each package may import from bismap (the layers below it). engine is the generic training and
# inference machinery: it knows nothing of BiSMAP's method; the method knows no stage; no library
# layer knows the workflow, the CLI, the benchmark sweeps or the bench.
MAY_IMPORT = {
    "io": set(),
    "data": {"io"},
    "models": {"io"},
    "evaluation": {"io", "data"},
    "engine": {"io", "data", "models"},
    "method": {"io", "data", "models", "evaluation", "engine"},
    "stages": {"io", "data", "models", "evaluation", "engine", "method"},
}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "bismap" and len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_layers_import_only_downward(package: str) -> None:
    root = PACKAGE / package
    files = sorted(root.rglob("*.py")) if root.is_dir() else [PACKAGE / f"{package}.py"]
    bad = sorted({f"{p.relative_to(PACKAGE)} -> {m}" for p in files for m in imported_modules(p)
                  if (t := package_of(m)) not in (None, package) and t not in MAY_IMPORT[package]})
    assert files and not bad, f"bismap/{package} imports above its layer: {bad}"


def test_the_architecture_check_sees_a_violation(tmp_path) -> None:
    """The check reads function-level imports too (most of ours are)."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from bismap.stages.warmup import run\n    import bismap.workflow.params\n")
    assert {package_of(m) for m in imported_modules(f)} >= {"stages", "workflow"}


@pytest.mark.parametrize("stage", STAGES, ids=lambda p: p.stem)
def test_stage_modules_do_not_import_each_other(stage: Path) -> None:
    siblings = {f"bismap.stages.{p.stem}" for p in STAGES} | {"bismap.stages"}
    bad = sorted(m for m in imported_modules(stage) if m in siblings or m.startswith("bismap.stages."))
    assert not bad, f"{stage.name} imports {bad}: move what they share into engine/, data/ or io"


def test_class_count_and_ignore_index_are_defined_once() -> None:
    defined = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                defined += [(n, path.relative_to(PACKAGE).as_posix())
                            for n in names & {"NUM_CLASSES", "IGNORE_INDEX", "IGNORE"}]
    assert sorted(defined) == [("IGNORE_INDEX", "data/labels.py"), ("NUM_CLASSES", "data/labels.py")]


MAX_MODULE_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    """A newcomer reads a module in one sitting: split a long one by what its parts are."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


MAX_FUNCTION_LINES = 60


def test_long_functions_say_why() -> None:
    """A function over 60 lines is split into named steps, or its docstring says "Long because"."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a reason: {long}"
