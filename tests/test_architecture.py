"""The layers: each package imports only downward, and the daemon never loads the image builder."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sandboxd"
# Top to bottom: a layer may import the layers below it, never one above.
LAYERS = ("api", "ops", "service", "engine", "images", "containerd")
# Modules at the top that every layer may use; they import no layer themselves.
SHARED = ("config", "models", "validation", "runtimes", "supervisor")
# Modules at the top that sit above every layer.
ENTRY_POINTS = ("cli", "__main__")
MAX_TOP_LEVEL_MODULES = 8
# Layers that serve no HTTP: they must not even import aiohttp.
NO_HTTP = ("service", "engine", "images", "containerd")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (functions and TYPE_CHECKING included).

    For ``from X import Y`` also ``X.Y`` (Y may be a module); relative imports are made absolute.
    """
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _unit(module: str) -> str:
    """The layer or top-level module a ``sandboxd.`` module belongs to."""
    return module.split(".")[1] if module.count(".") else ""


def _exists(unit: str) -> bool:
    return (PACKAGE / unit).is_dir() or (PACKAGE / f"{unit}.py").is_file()


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_pb" not in p.relative_to(PACKAGE).parts)


def _violations() -> list[str]:
    problems = []
    for path in _sources():
        module = _module_name(path)
        unit = _unit(module)
        for imported in sorted(_imports(path)):
            if not imported.startswith("sandboxd.") and imported != "sandboxd":
                if imported.split(".")[0] == "aiohttp" and unit in (
                    "engine",
                    "images",
                    "containerd",
                    "service",
                ):
                    problems.append(f"{module} imports aiohttp")
                continue
            target = _unit(imported)
            if target in ("", unit) or (
                not (PACKAGE / target).exists() and not (PACKAGE / f"{target}.py").exists()
            ):
                continue
            if unit == "containerd":
                problems.append(
                    f"{module} imports {imported}: containerd/ imports nothing of sandboxd outside itself"
                )
            elif unit in LAYERS and target in LAYERS and LAYERS.index(target) < LAYERS.index(unit):
                problems.append(f"{module} imports {imported}, a layer above it")
            elif unit in SHARED and target not in SHARED:
                problems.append(f"{module} imports {imported}: shared modules import no layer")
            elif unit in LAYERS + SHARED and target in ENTRY_POINTS:
                problems.append(f"{module} imports {imported}, an entry point")
    return problems


def test_layers_import_only_downward() -> None:
    """No module imports a layer above its own; containerd/ is self-contained; the engine has no aiohttp."""
    assert _violations() == []


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The import scan finds an import of a layer above (the check above cannot pass vacuously)."""
    probe = PACKAGE / "engine" / "_layering_probe.py"
    probe.write_text("from sandboxd.api.app import create_app\nfrom aiohttp import web\n")
    try:
        found = _violations()
    finally:
        probe.unlink()
    assert "sandboxd.engine._layering_probe imports sandboxd.api.app, a layer above it" in found
    assert "sandboxd.engine._layering_probe imports aiohttp" in found


def test_every_layer_is_a_package_with_a_one_sentence_docstring() -> None:
    """Each layer package exists and says its job in its docstring's first line."""
    for layer in LAYERS:
        docstring = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert docstring, f"sandboxd/{layer}/__init__.py has no docstring"
        assert docstring.splitlines()[0].endswith("."), layer


def test_few_modules_at_the_top() -> None:
    """At most eight modules stay at the top of the package; the rest live in a layer."""
    top = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert set(top) <= {*SHARED, *ENTRY_POINTS, "__init__"}, top


@pytest.mark.parametrize("entry", ["sandboxd.cli", "sandboxd.api.app"])
def test_the_daemon_does_not_import_the_image_builder(entry: str) -> None:
    """Loading the daemon (its command line or its app) leaves the offline image builder unloaded."""
    probe = f"import sys, {entry}; print('sandboxd.images.build' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "False"


# Modules of these names are protobuf; only the containerd client may import them.
_PROTOBUF = ("sandboxd.containerd._pb", "google.protobuf")


def test_protobuf_does_not_leave_the_containerd_package() -> None:
    """Outside sandboxd/containerd/ nothing imports the stubs or protobuf: callers get attrs values."""
    inside = PACKAGE / "containerd"
    checks_the_stubs = ROOT / "tests" / "test_protos.py"
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for folder in ("sandboxd", "tests", "bench", "tools")
        for path in (ROOT / folder).rglob("*.py")
        if not path.is_relative_to(inside) and path != checks_the_stubs
        for module in _imports(path)
        if any(module == name or module.startswith(f"{name}.") for name in _PROTOBUF)
    )
    assert offenders == []
