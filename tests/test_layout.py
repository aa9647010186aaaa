"""The house rules: imports run one way (store <- delivery <- doors <- app), no cycles,
no module over 400 lines, and a worker's ``from hub import Publisher`` loads no web stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HUB = Path(__file__).resolve().parent.parent / "hub"
WORKERS = HUB.parent / "workers"

#: Each module's layer; a module may import only from its own layer or lower ones.
#: Foundation modules (errors, config, flag, logs, supervise, version) are usable anywhere.
LAYERS = {"store": 1, "delivery": 2, "doors": 3}
FOUNDATION = {"hub.errors", "hub.config", "hub.flag", "hub.logs", "hub.supervise", "hub.version"}
#: The package face may be imported by anyone; it loads the wings lazily.
FACE = "hub"
#: Modules that a layer-independent user (a worker, a client script) may import alone.
STANDALONE = {"hub.client"}
HEAVY = ("starlette", "uvicorn", "jwt", "prometheus_client", "sse_starlette")


def _module(path: Path) -> str:
    parts = path.relative_to(HUB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    path = HUB.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _layer(module: str) -> int:
    if module in FOUNDATION or module == FACE or module in STANDALONE:
        return 0
    parts = module.split(".")
    return LAYERS.get(parts[1], 4) if len(parts) > 1 else 4


def _imports(*, typing: bool = False, roots: tuple[Path, ...] = (HUB,)) -> dict[str, set[str]]:
    """Every module under ``roots`` and the project modules it imports: at run time, and
    with ``typing`` also those imported for type checking only."""
    found: dict[str, set[str]] = {}
    ours = tuple(root.name for root in roots)
    for root in roots:
        for path in root.rglob("*.py"):
            module = _module(path)
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            tree = ast.parse(path.read_text(encoding="utf-8"))
            typing_only = {
                id(node)
                for block in ast.walk(tree)
                if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                for node in ast.walk(block)
            }
            names: set[str] = set()
            for node in ast.walk(tree):
                if id(node) in typing_only and not typing:
                    continue
                if isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        parent = (
                            package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                        )
                        base = f"{parent}.{base}" if base else parent
                    if base.split(".")[0] in ours:
                        # ``from package import module`` imports that module, not the
                        # package's own names.
                        modules = {
                            f"{base}.{a.name}" for a in node.names if _exists(f"{base}.{a.name}")
                        }
                        names.update(modules or {base})
                elif isinstance(node, ast.Import):
                    names.update(a.name for a in node.names if a.name.split(".")[0] in ours)
            found[module] = names
    return found


def test_no_module_imports_one_from_a_layer_above_it() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _imports().items()
        for target in targets
        if module != FACE and target != FACE and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_wings_do_not_import_the_package_face() -> None:
    # The face imports the wings (lazily); a wing importing it back is a circle.
    users = [m for m, targets in _imports().items() if FACE in targets and m != FACE]
    assert users == []


def test_the_native_door_imports_nothing_from_mercure() -> None:
    imports = _imports()
    assert [t for t in imports["hub.doors.native"] if t.startswith("hub.doors.mercure")] == []


def test_there_is_no_import_cycle() -> None:
    # Type-only imports count too: a circle of types is still a circle to a reader.
    imports = _imports(typing=True, roots=(HUB, WORKERS))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(imports.get(module, ())):
            if target not in imports:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            visit(module, [module])
    # A package importing its own modules (the face) is not a cycle of the house.
    assert [c for c in cycles if FACE not in c] == []


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(HUB.parent)): n
        for p in HUB.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}


@pytest.mark.parametrize(
    "statement",
    [
        "from hub import Publisher",
        "from hub import SyncPublisher, Settings, BackendUnavailable",
        "import hub.store",
        "import hub.logs",
    ],
)
def test_publishing_from_a_worker_loads_no_web_stack(statement: str) -> None:
    code = f"{statement}\nimport sys\nprint(sorted(m for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(eval(out))  # our own print of a list of strings
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == []


def _imported(node: ast.AST) -> list[str]:
    """The absolute module names an import statement names (none for other nodes)."""
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def test_only_the_store_talks_to_redis() -> None:
    # Redis errors become hub errors in one place (hub.store.failures): a module that
    # imported redis-py outside the store would see, and have to handle, its exceptions.
    talkers = []
    for path in HUB.rglob("*.py"):
        module = _module(path)
        if module.startswith("hub.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = _imported(node)
            talkers += [
                f"{module}: {n}" for n in names if n.split(".")[0] in ("redis", "fakeredis")
            ]
    assert talkers == []


def test_no_test_imports_conftest_or_another_test() -> None:
    tests = Path(__file__).resolve().parent
    found = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = _imported(node)
            found += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] == "conftest" or n.split(".")[0].startswith("test_")
            ]
    assert found == []
