"""Dependencies point one way: the CLI imports flows, flows import the library, and no library module imports
the CLI (`tasksynth.cli`) or a flow (`flows`). Imports are read with `ast`, so an import inside a function
counts as much as one at the top of a file."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ["envbuilder", "search_synth", "general_env", "notebook_env", "verifiers", "agent", "dsa_runner", "tasksynth"]
UPPER_LAYERS = ("tasksynth.cli", "flows")


def imported_modules(source: str) -> list[str]:
    """Every module an `import` or `from ... import` names, including `from tasksynth import cli`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def library_files() -> list[Path]:
    files = []
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            if package == "tasksynth" and path.relative_to(ROOT).parts[:2] == ("tasksynth", "cli"):
                continue
            files.append(path)
    return files


def reaches_upper_layer(module: str) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in UPPER_LAYERS)


def test_the_check_sees_every_form_of_import():
    source = "import flows.code\nfrom tasksynth import cli\ndef f():\n    from tasksynth.cli.main import app\n"
    assert [m for m in imported_modules(source) if reaches_upper_layer(m)] == ["flows.code", "tasksynth.cli",
                                                                               "tasksynth.cli.main",
                                                                               "tasksynth.cli.main.app"]
    assert not reaches_upper_layer("flowsy") and not reaches_upper_layer("tasksynth.client")


@pytest.mark.parametrize("package", [p for p in LIBRARY if (ROOT / p).is_dir()])
def test_no_library_module_imports_the_cli_or_a_flow(package):
    offenders = [f"{path.relative_to(ROOT)}: {module}"
                 for path in library_files() if path.relative_to(ROOT).parts[0] == package
                 for module in imported_modules(path.read_text()) if reaches_upper_layer(module)]
    assert offenders == [], "library modules import the CLI or a flow:\n" + "\n".join(offenders)
