"""The layout of the test modules, read from their source: a test that runs an entry point (train.py,
sample.py, python -m data.prepare or heads.report, torchrun) in a child process lives in a module
named *_cli.py, and a module of that name runs one; every other module calls the project in this
process. tests/gpu/ follows the same rule (its runner is gpu/conftest.py's run_gpu_entry)."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
RUNNERS = {"run_entry", "run_gpu_entry"}  # tests/conftest.py's and tests/gpu/conftest.py's child-process runners


def child_process_calls(source: str) -> list[tuple[int, str]]:
    """(line, what) for every call that starts a child process: the conftest runners (imported from
    conftest; common.cli.run_entry runs in this process), or anything of subprocess's."""
    tree = ast.parse(source)
    runners, subprocess_names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] == "conftest":
            runners |= {alias.asname or alias.name for alias in node.names if alias.name in RUNNERS}
        elif isinstance(node, ast.ImportFrom) and node.module == "subprocess":
            subprocess_names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            subprocess_names |= {alias.asname or alias.name for alias in node.names if alias.name == "subprocess"}
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if name in runners or name in subprocess_names or base in subprocess_names:
            calls.append((node.lineno, ast.unparse(func)))
    return sorted(calls)


def test_only_cli_modules_run_child_processes():
    problems = []
    for path in sorted(TESTS.rglob("test_*.py")):
        module = path.relative_to(TESTS.parent)
        calls = child_process_calls(path.read_text(encoding="utf-8"))
        if path.name.endswith("_cli.py"):
            if not calls:
                problems.append(f"{module}: named *_cli.py but runs no child process: drop the _cli suffix")
        else:
            problems += [f"{module}:{line}: {what}(...) runs a child process outside a *_cli.py module: move the "
                         f"test to {module.with_name(path.stem + '_cli.py')}" for line, what in calls]
    assert not problems, "\n".join(problems)


def test_the_layout_rule_tells_a_runner_from_an_in_process_call():
    assert child_process_calls("from conftest import run_entry\nrun_entry('train.py')\n") == [(2, "run_entry")]
    assert child_process_calls("import subprocess\nsubprocess.run(['ls'])\n") == [(2, "subprocess.run")]
    assert child_process_calls("from common.cli import run_entry\nrun_entry(job)\n") == []  # runs job() here


# the project's layers, bottom up: a module imports only from layers below its own and from its own
# package; common/ holds the leaf modules every layer may import, which import nothing else of the
# project. A module's `if __name__ == "__main__":` block is an entry point (python -m data.prepare), on top.
LAYERS = {"common": 0, "model": 1, "data": 2, "heads": 3, "trainer": 4}
ENTRY, BENCH = 5, 6  # train.py and sample.py; bench/ times train.py's step


def project_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of the project's packages, outside `__main__` blocks."""
    main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    inside_main = {id(n) for block in main_blocks for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in inside_main:
            continue
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in {*LAYERS, "train"}]
    return found


def test_every_import_follows_the_layers():
    problems = []
    for path in sorted(TESTS.parent.glob("*.py")) + sorted(TESTS.parent.glob("[a-z]*/*.py")):
        module = path.relative_to(TESTS.parent)
        package = module.parts[0] if len(module.parts) > 1 else None
        if package in ("tests", ".venv") or (package and package not in LAYERS and package != "bench"):
            continue
        layer = BENCH if package == "bench" else LAYERS.get(package, ENTRY)
        for line, imported in project_imports(ast.parse(path.read_text(encoding="utf-8"))):
            target = LAYERS.get(imported, ENTRY)
            if imported == package or target < layer:
                continue
            problems.append(f"{module}:{line} imports {imported} (layer {target}) from layer {layer}")
    assert not problems, "\n".join(problems)


LONGEST = 60  # lines: one screen
LOOP = ("train.py", "fit")  # the training loop, written inline as nanoGPT's


def test_no_function_is_longer_than_a_screen_but_the_training_loop():
    long = []
    for path in sorted(TESTS.parent.glob("*.py")) + sorted(TESTS.parent.glob("[a-z]*/*.py")):
        module = path.relative_to(TESTS.parent)
        if module.parts[0] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.FunctionDef) and lines > LONGEST and (str(module), node.name) != LOOP:
                long.append(f"{module}: {node.name} is {lines} lines")
    assert not long, "\n".join(long)
