"""dvc.yaml declares everything each stage reads, derived here from the code.

A stage runs ``python -m pipelines step <name>``: ``_<name>_stage`` in
``pipelines/__main__.py`` hands ``pipelines.steps.<name>.<name>`` the params
sections it reads. So a stage's params are the sections its step function's
arguments are typed with (``DatasetConfig`` -> ``dataset``, ``Params`` -> all), and
its code is every file under ``pipelines/`` that the step module and that CLI
entry import, transitively, inside functions too (packages' ``__init__.py``
included, imports only type checkers see left out). When ``dvc.yaml`` drifts
from the code, ``dvc repro`` would reuse stale outputs; these tests name the
stage and what it misses, or lists without reading.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import yaml

from pipelines.config import Params

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "pipelines" / "__main__.py"
STAGES = ("preprocess", "train", "evaluate")


def _imports(node: ast.AST) -> set[str]:
    """Modules the import statements under ``node`` name (``from a import b``: ``a`` and ``a.b``)."""
    names: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
            names |= {n for c in child.orelse for n in _imports(c)}  # the body never runs
            continue
        if isinstance(child, ast.Import):
            names |= {a.name for a in child.names}
        elif isinstance(child, ast.ImportFrom):
            names |= {child.module} | {f"{child.module}.{a.name}" for a in child.names}
        names |= _imports(child)
    return names


def _file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _code_files(modules: set[str]) -> set[str]:
    """The files of ``modules`` and of everything under ``pipelines`` they import, transitively."""
    files: set[Path] = set()
    todo = [m for m in modules if m.split(".")[0] == "pipelines"]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a module runs its packages
        path = _file(module)
        if path is None or path in files:
            continue
        files.add(path)
        todo += [m for m in _imports(ast.parse(path.read_text())) if m.split(".")[0] == "pipelines"]
    return {p.relative_to(REPO).as_posix() for p in files}


def _entry_imports(stage: str) -> set[str]:
    """What ``python -m pipelines step <stage>`` imports in ``__main__``: its top level, ``_step``,
    ``_<stage>_stage`` and the module's functions they call."""
    tree = ast.parse(MAIN.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = ast.Module([n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)], [])
    names, todo, seen = _imports(top), ["_step", f"_{stage}_stage"], set()
    assert f"_{stage}_stage" in functions, f"pipelines/__main__.py has no _{stage}_stage"
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        names |= _imports(functions[name])
        todo += [
            c.func.id for c in ast.walk(functions[name]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
        ]
    return names


def _step_sections(stage: str) -> set[str]:
    """The params sections ``pipelines.steps.<stage>.<stage>`` takes, from its arguments' annotations."""
    section_of = {f.annotation.__name__: f.alias or name for name, f in Params.model_fields.items()}
    tree = ast.parse((REPO / "pipelines" / "steps" / f"{stage}.py").read_text())
    step = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == stage)
    sections: set[str] = set()
    for arg in [*step.args.posonlyargs, *step.args.args, *step.args.kwonlyargs]:
        kind = ast.unparse(arg.annotation) if arg.annotation else ""
        sections |= (
            set(section_of.values()) if kind == "Params" else {section_of[kind]} if kind in section_of else set()
        )
    return sections


def expected(stage: str) -> tuple[set[str], set[str]]:
    """The params sections and the code files (under ``pipelines/``) that ``stage`` reads."""
    code = _code_files(_entry_imports(stage) | {f"pipelines.steps.{stage}"}) | {"pipelines/__main__.py"}
    return _step_sections(stage), code


def drift(dvc: dict) -> list[str]:
    """What each stage of a parsed dvc.yaml misses, or lists without reading; empty when it matches the code."""
    problems = []
    for stage in STAGES:
        declared = dvc["stages"][stage]
        params, code = expected(stage)
        listed_params = set(declared.get("params", []))
        listed_code = {d for d in declared.get("deps", []) if d.startswith("pipelines/")}
        for what, missing in (("params", params - listed_params), ("deps", code - listed_code)):
            problems += [f"stage {stage}: {what} misses {m}" for m in sorted(missing)]
        for what, extra in (("params", listed_params - params), ("deps", listed_code - code)):
            problems += [f"stage {stage}: {what} lists {e}, which it does not read" for e in sorted(extra)]
    return problems


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_yaml_declares_what_each_stage_reads() -> None:
    assert set(_dvc_yaml()["stages"]) == set(STAGES)
    assert drift(_dvc_yaml()) == []


def test_the_check_reports_a_cut_param_and_a_cut_dep() -> None:
    cut = copy.deepcopy(_dvc_yaml())
    cut["stages"]["evaluate"]["params"].remove("register")
    cut["stages"]["train"]["deps"].remove("pipelines/model/network.py")
    assert drift(cut) == [
        "stage train: deps misses pipelines/model/network.py",
        "stage evaluate: params misses register",
    ]


def test_what_a_step_reads_follows_its_code() -> None:
    """The derivation itself: sections from the signature, files through imports inside functions too."""
    params, code = expected("evaluate")
    assert params == {"dataset", "preprocess", "train", "evaluate", "register"}
    # evaluate imports the model's network and tf.data modules inside its function.
    assert {"pipelines/model/network.py", "pipelines/model/tfdata.py", "pipelines/config/training.py"} <= code
    assert "pipelines/steps/train.py" not in code and "pipelines/runner/training.py" not in code
    assert expected("preprocess")[0] == {"dataset", "preprocess"}
