"""The layering contract: lower layers never import higher ones (``[tool.importlinter]`` in
pyproject.toml, checked with import-linter, function-level imports included), and no two fedsim
modules import each other, directly or through others."""

from pathlib import Path

import grimp
from importlinter import cli

ROOT = Path(__file__).resolve().parents[2]


def test_layers_contract_is_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_import_cycle_between_fedsim_modules():
    graph = grimp.build_graph("fedsim", cache_dir=None)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    cycles = []
    done: set[str] = set()
    for start in sorted(imports):
        stack, path, on_path = [(start, iter(sorted(imports[start])))], [start], {start}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(path.pop())
                done.add(node)
            elif child in on_path:
                cycles.append(path[path.index(child):] + [child])
            elif child not in done:
                stack.append((child, iter(sorted(imports[child]))))
                path.append(child)
                on_path.add(child)
    assert not cycles, f"import cycles: {cycles[:3]}"
