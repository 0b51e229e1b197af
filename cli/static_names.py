"""Names of registered components and keys of constant tables, read from the source files without importing them.

The parsers of train.py and eval.py list these names as the choices of --aggregation, --backbone, --criterion, ...
Importing the components would import torch (over a second), so `--help` and flag errors read the sources instead
(a few milliseconds). The registries stay the truth at run time: tests/test_registry.py checks that what is read here
equals their contents, for every registry.

Registrations understood (the forms the project uses):
- `@REG.register("name")`, `@alias("name")` with `alias = REG.register`, where `REG = Registry("kind")`;
- `@helper("name", ...)` where `helper` is a function whose body calls `REG.register(<its first parameter>)`;
- `for key[, ...] in TABLE.items():  helper(key)(...)` over a module-level dict literal TABLE.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENT_PACKAGES = ("model", "training", "retrieval")  # where components are registered


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _files() -> list[Path]:
    return sorted(p for pkg in COMPONENT_PACKAGES for p in (ROOT / pkg).glob("*.py"))


def _registrars(trees: list[ast.Module]) -> dict[str, str]:
    """Callable name → registry kind: `REG.register` aliases and helper functions calling REG.register(param)."""
    kinds: dict[str, str] = {}  # registry variable → kind
    for tree in trees:
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "Registry" and node.value.args):
                kinds[node.targets[0].id] = node.value.args[0].value
    out = {f"{var}.register": kind for var, kind in kinds.items()}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute):
                key = f"{getattr(node.value.value, 'id', '')}.{node.value.attr}"
                if key in out:
                    out[node.targets[0].id] = out[key]
            elif isinstance(node, ast.FunctionDef) and node.args.args:
                first = node.args.args[0].arg
                for call in ast.walk(node):
                    if (isinstance(call, ast.Call) and _callee(call) in out and call.args
                            and getattr(call.args[0], "id", None) == first):
                        out[node.name] = out[_callee(call)]
    return out


def _callee(call: ast.Call) -> str:
    """'name' or 'var.attr' of a call's function ('' for anything else)."""
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return f"{f.value.id}.{f.attr}"
    return ""


def _dict_keys(tree: ast.Module, name: str) -> list[str] | None:
    """Keys of the module-level dict literal (or items of a tuple/list literal of strings) assigned to `name`."""
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if getattr(target, "id", None) == name and getattr(node, "value", None) is not None:
            value = node.value
            items = value.keys if isinstance(value, ast.Dict) else getattr(value, "elts", None)
            if items is not None:
                return [k.value for k in items if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return None


def _loop_table(loop: ast.For, tree: ast.Module) -> list[str]:
    """Keys of the dict literal a `for` loop iterates over (`T`, `T.items()`, `T.keys()`), else []."""
    it = loop.iter
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("items", "keys"):
        it = it.func.value
    return (_dict_keys(tree, it.id) or []) if isinstance(it, ast.Name) else []


@lru_cache(maxsize=None)
def registered_names() -> dict[str, tuple[str, ...]]:
    """{registry kind: sorted names registered in the component packages}, e.g. {"aggregation": ("crn", ...)}."""
    trees = [_tree(p) for p in _files()]
    registrars = _registrars(trees)
    found: dict[str, set[str]] = {kind: set() for kind in registrars.values()}
    for tree in trees:
        loops = {id(c): loop for loop in ast.walk(tree) if isinstance(loop, ast.For) for c in ast.walk(loop)}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            kind = registrars.get(_callee(call))
            if kind is None or not call.args:
                continue
            arg = call.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found[kind].add(arg.value)
            elif isinstance(arg, ast.Name) and id(call) in loops:
                found[kind].update(_loop_table(loops[id(call)], tree))
    return {kind: tuple(sorted(names)) for kind, names in found.items()}


def constant_keys(module: str, name: str) -> tuple[str, ...]:
    """Keys of dict literal (or strings of tuple literal) `name` in `module` ("training.optim"), in source order."""
    keys = _dict_keys(_tree(ROOT / f"{module.replace('.', '/')}.py"), name)
    if keys is None:
        raise LookupError(f"{module}.{name} is not a literal dict, tuple or list")
    return tuple(keys)
