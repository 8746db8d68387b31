"""The package's layout rules: no import cycles (module-level or inside functions), and the light modules stay
light (what `--help` and config errors import)."""

import ast
import subprocess
import sys

from conftest import REPO

SRC = REPO / "src" / "echo_lstm"


def import_graph() -> dict[str, set[str]]:
    """echo_lstm module -> the echo_lstm modules it imports anywhere in its code (functions included)."""
    modules = {"echo_lstm." + ".".join(p.relative_to(SRC).with_suffix("").parts): p for p in SRC.rglob("*.py")}
    modules = {m.removesuffix(".__init__"): p for m, p in modules.items()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("echo_lstm"):
                named = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in named if t in modules] or [node.module]  # a submodule, else the module
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("echo_lstm")]
            else:
                continue
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    cycles = []

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == start:
                cycles.append(" -> ".join([*path, start]))
            elif nxt not in path:
                visit(start, nxt, [*path, nxt])

    for module in graph:
        visit(module, module, [module])
    assert cycles == []


def test_the_config_layer_imports_neither_torch_nor_lightning():
    light = ["machinery.config", "machinery.cli", "machinery.errors", "metrics", "machinery.resume", "machinery.rundir",
             "machinery.preflight", "machinery.sweeps.summary", "machinery.evaluation", "machinery.signatures"]
    code = (f"import sys; import {', '.join('echo_lstm.' + m for m in light)}; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
