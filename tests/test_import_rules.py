"""The package layout's rules (DESIGN.md), read from the source: parts import only the kernel, the
kernel imports no part, modules form no import cycle, and the pure modules load no I/O library."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("webhook", "sidecar", "preloader", "worker", "controller")
KERNEL = "eddy"
OUTSIDE_PRODUCTION = ("sandbox", "eddy_cli", "bench", "tests")
# The hard logic, kept pure (DESIGN.md "Keep the hard logic pure and the I/O thin").
PURE = ("webhook.injector", "webhook.sidecar_container", "worker.eviction", "preloader.plan",
        "preloader.schedule", "sidecar.namespace", "sidecar.readahead", "controller.plan",
        "eddy.blocks", "eddy.quantity", "eddy.names", "eddy.listing", "eddy.crc", "eddy.retry",
        "eddy.ratelimit", "eddy.cron", "eddy.manifests", "eddy.cliargs", "eddy.kube.hooks", "eddy.kube.flags",
        "eddy.rawhttp")
IO_LIBRARIES = ("aiohttp", "aiobotocore", "botocore", "kubernetes_asyncio")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in (*PARTS, KERNEL, "sandbox", "eddy_cli"):
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, *, top_level_only: bool, known: dict[str, Path] | None = None) -> Iterator[str]:
    """Modules `path` imports. `from pkg import sub` names `pkg.sub` when that is one of `known`'s
    modules (importing a submodule is not an import of the package's own code), else `pkg`."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # TYPE_CHECKING imports cost nothing
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            if known is None:
                yield node.module
                yield from subs
            else:
                found = [sub for sub in subs if sub in known]
                yield from found
                if len(found) < len(subs):
                    yield node.module


def test_parts_import_only_the_kernel() -> None:
    wrong = []
    for name, path in modules().items():
        top = name.split(".")[0]
        if top not in PARTS:
            continue
        for imported in imports(path, top_level_only=False):
            other = imported.split(".")[0]
            if other != top and other in (*PARTS, *OUTSIDE_PRODUCTION):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_the_kernel_imports_no_part() -> None:
    wrong = [f"{name} imports {imported}" for name, path in modules().items() if name.split(".")[0] == KERNEL
             for imported in imports(path, top_level_only=False)
             if imported.split(".")[0] in (*PARTS, *OUTSIDE_PRODUCTION)]
    assert not wrong, wrong


def test_no_module_cycles() -> None:
    known = modules()
    graph = {name: sorted({i for i in imports(path, top_level_only=True, known=known)
                           if i in known and i != name})
             for name, path in known.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_pure_modules_load_no_io_library() -> None:
    """Import each pure module in a fresh interpreter and look at what it pulled in."""
    import subprocess
    import sys

    code = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[2:])))")
    loaded = {}
    for module in PURE:
        out = subprocess.run([sys.executable, "-c", code, module, *IO_LIBRARIES], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        if out != "[]":
            loaded[module] = out
    assert not loaded, loaded
