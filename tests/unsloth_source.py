"""Run pieces of Unsloth's GPU path on CPU, taken from its installed source files.

`import unsloth.models` needs triton, so on a machine without a GPU the files are read as text and only the parts a
test needs are executed: a module-level function with the helpers it reaches (`exec_definition`), or the code a
generator function writes into the trainers it generates (`generated_code`: rl.py builds `UnslothSFTTrainer.__init__`
from string constants). Each raises when a newer Unsloth moved or renamed what it reads, so a test fails here, by
name, rather than passing against code that no longer exists.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
from pathlib import Path
from typing import Any


def source_path(relative: str) -> Path:
    """A file of the installed `unsloth` package (found without importing `unsloth.models`)."""
    package = importlib.util.find_spec("unsloth")
    return Path(package.submodule_search_locations[0]) / relative


def _parse(relative: str) -> tuple[Path, ast.Module]:
    path = source_path(relative)
    return path, ast.parse(path.read_text(), str(path))


def _top_level_definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Module-level functions and `NAME = ...` assignments by name (imports are supplied separately)."""
    definitions: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign):
            definitions.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return definitions


def _names_read(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _needed_definitions(definitions: dict[str, ast.stmt], root: str, supplied: set[str]) -> list[ast.stmt]:
    """`root` and every module-level definition it reaches (but those `supplied` otherwise), in file order."""
    needed, pending = set(), [root]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        pending += [n for n in _names_read(definitions[name]) if n in definitions and n not in supplied]
    nodes = {id(definitions[name]): definitions[name] for name in needed}
    return sorted(nodes.values(), key=lambda node: node.lineno)


def _unresolved_names(nodes: list[ast.stmt], known: set[str]) -> set[str]:
    """Names the nodes read that are neither `known`, builtins, nor bound inside them (locals, parameters)."""
    walked = [n for node in nodes for n in ast.walk(node)]
    bound = {n.arg for n in walked if isinstance(n, ast.arg)}
    bound |= {n.id for n in walked if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {n.name for n in walked if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    bound |= {(a.asname or a.name).split(".")[0] for n in walked if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}
    bound |= {n.name for n in walked if isinstance(n, ast.ExceptHandler) and n.name}
    return set().union(*map(_names_read, nodes)) - known - bound - set(dir(builtins))


def exec_definition(relative: str, root: str, namespace: dict) -> Any:
    """Module-level `root` of an Unsloth file, executed with the definitions it reaches; `namespace` supplies what
    the file imports."""
    path, tree = _parse(relative)
    definitions = _top_level_definitions(tree)
    if root not in definitions:
        raise RuntimeError(f"{relative} no longer defines {root}")
    nodes = _needed_definitions(definitions, root, set(namespace))
    if missing := _unresolved_names(nodes, set(definitions) | set(namespace)):
        raise RuntimeError(f"{root} in {relative} now reads {sorted(missing)}; supply them in the namespace")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[root]


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not found:
        raise RuntimeError(f"no function {name}")
    return found[0]


def _assignments_in_order(statements: list[ast.stmt], conditions: dict) -> list[ast.Assign]:
    """Plain assignments in source order, following the branches a generator takes for `conditions` (an `if` it
    cannot decide from them is entered, its `else` skipped)."""
    found: list[ast.Assign] = []
    for node in statements:
        if isinstance(node, ast.Assign):
            found.append(node)
        elif isinstance(node, ast.If):
            try:
                taken = eval(compile(ast.Expression(node.test), "<condition>", "eval"), {}, dict(conditions))
            except Exception:  # noqa: BLE001 - reads something the generator computes: follow the body
                taken = True
            found += _assignments_in_order(node.body if taken else node.orelse, conditions)
        elif isinstance(node, (ast.For, ast.While, ast.With, ast.Try)):
            found += _assignments_in_order(node.body, conditions)
    return found


def generated_assignments(relative: str, function: str, conditions: dict) -> list[tuple[str, Any]]:
    """(name, value) of each assignment a generator function (rl.py's `_patch_trl_rl_trainers_impl`) makes on the
    path `conditions` decides (e.g. trainer_file="sft_trainer"), in order: string constants, f-strings and literals,
    each evaluated with the values assigned before it (assignments computed from the trainer's source are skipped)."""
    _, tree = _parse(relative)
    values: dict[str, Any] = dict(conditions)
    found = []
    for node in _assignments_in_order(_function(tree, function).body, conditions):
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        try:
            value = eval(compile(ast.Expression(node.value), "<generated>", "eval"), {}, dict(values))
        except Exception:  # noqa: BLE001 - computed at generation time: not a constant
            continue
        values.update({t: value for t in targets})
        found += [(t, value) for t in targets]
    return found


def generated_values(relative: str, function: str, names: list[str], conditions: dict) -> dict[str, Any]:
    """The last value the generator gives each of `names` on that path."""
    values = dict(generated_assignments(relative, function, conditions))
    missing = [n for n in names if n not in values]
    if missing:
        raise RuntimeError(f"{function} in {relative} no longer assigns {missing} as constants")
    return {n: values[n] for n in names}
