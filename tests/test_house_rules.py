"""The rules of docs/architecture.md, checked on the source: who may import whom, the engine's public
surface, no import circle, no source file over 400 lines. Read from the files' syntax trees (every
import, at module level or inside a function), so a rule broken anywhere fails here."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "client", "eval", "slipstream", "testkit", "bench", "tests")
MAX_LINES = 400
# the engine runs in process and inside Triton's python backend: it knows neither HTTP nor Triton
ENGINE_MUST_NOT = ("fastapi", "starlette", "uvicorn", "httpx", "tritonclient", "triton_python_backend_utils")
FORBIDDEN = {  # package -> what it must not import
    "client": ("server", "eval"),
    "server": ("client", "eval"),
    "eval": ("server",),
}


def _sources() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return sorted({ROOT / p for p in (tracked + untracked).split() if p.split("/")[0] in PACKAGES and (ROOT / p).is_file()})


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports (absolute names, relative ones resolved), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((base, node.lineno))
            # `from server.engine import reuse_grid` imports a module too
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


SOURCES = _sources()
OURS = {_module(p) for p in SOURCES}


def test_the_sources_were_found() -> None:
    assert {"server.engine.engine", "client.api", "eval.humaneval", "server.models.export"} <= OURS


def test_no_source_file_over_the_limit() -> None:
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these (at most {MAX_LINES} lines): {long}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_who_imports_whom(package: str) -> None:
    broken = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in SOURCES
        if _module(p).split(".")[0] == package
        for name, line in _imports(p)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert broken == []


def test_the_engine_knows_no_http_and_no_triton() -> None:
    broken = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in SOURCES
        if _module(p).startswith("server.engine")
        for name, line in _imports(p)
        if name.split(".")[0] in ENGINE_MUST_NOT
    ]
    assert broken == []


def test_the_engine_is_reached_through_its_public_surface() -> None:
    engine_modules = {m for m in OURS if m.startswith("server.engine.")}
    broken = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in SOURCES
        if not _module(p).startswith("server.engine") and not _module(p).startswith("tests.")
        for name, line in _imports(p)
        if name in engine_modules
    ]
    assert broken == []


def test_no_import_circle() -> None:
    graph = {_module(p): {name for name, _ in _imports(p) if name in OURS and name != _module(p)} for p in SOURCES}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            # a package's own __init__ re-exporting its modules is not a circle with them
            if module.startswith(target + ".") or target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles)


def test_ruff_finds_nothing() -> None:
    """pyflakes, pycodestyle, import order, bugbear and pyupgrade (pyproject.toml [tool.ruff])."""
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", *PACKAGES], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    """One layout (pyproject.toml [tool.ruff]): `ruff format` would change no file."""
    import sys

    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_mypy_finds_nothing() -> None:
    """server/, client/ and eval/ type-check (pyproject.toml [tool.mypy]; every `type: ignore` left is used)."""
    import sys

    done = subprocess.run([sys.executable, "-m", "mypy", "server", "client", "eval"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _section_modules(text: str) -> dict[str, set[str]]:
    """Each `### package/` section of the map's "Every module" with the .py files it names."""
    modules = text.split("## Every module", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for section in modules.split("\n### ")[1:]:
        folder = section.split()[0].rstrip("/")
        found[folder] = set(re.findall(r"`([\w]+\.py)`", section))
    return found


def test_the_map_lists_every_module_and_only_those() -> None:
    """docs/architecture.md's "Every module": each package's .py files, none left out, none that is gone."""
    sections = _section_modules(ARCHITECTURE.read_text())
    assert {"server", "server/engine", "server/models", "client", "eval"} <= set(sections)
    wrong = {}
    for folder, named in sections.items():
        there = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        if named - {"__init__.py"} != there:
            wrong[folder] = {"not in the map": sorted(there - named), "gone": sorted(named - there - {"__init__.py"})}
    assert wrong == {}


def _defines(tree: ast.Module, dotted: list[str]) -> bool:
    body: list[ast.stmt] = tree.body
    for part in dotted:
        node = next((n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part), None)
        if node is None:
            return False
        body = node.body
    return True


def test_every_hop_the_map_names_is_in_the_code() -> None:
    """The paths of the map (a completion's hops both ways, an evaluation's) name file:`function` or
    file:`Class.method`: each must be defined in that file, so the map cannot drift from the code."""
    hops = re.findall(r"([\w/]+\.py):`([\w.]+)`", ARCHITECTURE.read_text())
    assert len(hops) >= 25
    missing = [f"{path}:{name}" for path, name in hops if not _defines(ast.parse((ROOT / path).read_text()), name.split("."))]
    assert missing == []
