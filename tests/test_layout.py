"""The package's shape, checked on its source: no module reaches into another's underscore
names, every stored stage lives in ``fincompress/stages/``, and the runtime path (load an
artifact and predict) does not import the training stack."""

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "fincompress"


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(PACKAGE.rglob("*.py"))]


def test_no_module_imports_another_modules_underscore_names():
    offences = [f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}"
                for path, tree in modules() for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__"
                for alias in node.names if alias.name.startswith("_")]
    assert offences == []


def test_every_stored_stage_is_built_in_the_stages_package():
    builders = {path.relative_to(PACKAGE).as_posix() for path, tree in modules()
                for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ensure_stage"}
    assert builders and all(name.startswith("stages/") for name in builders), builders
    stages = {path.stem for path in (PACKAGE / "stages").glob("*.py")} - {"__init__"}
    assert {"teacher", "pseudo_labels", "distill", "fresh", "prune", "quantize", "qat",
            "compress", "benchmark"} <= stages


def test_loading_a_model_does_not_import_the_training_stack():
    code = ("import sys, fincompress.api, fincompress.predict; "
            "print(sorted(m for m in ('lightning', 'torchmetrics', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
