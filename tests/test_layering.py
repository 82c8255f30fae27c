"""The architecture a newcomer reads from the folder names holds in the code: eval/ measures, interventions/
change (on top of eval), ledger/ accounts (on nothing of ours), train/ wires them together, and nothing
imports train/. Checked on every import statement, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {  # each folder (welfare_offsets.<folder>) and the others it may import
    "eval": set(),
    "interventions": {"eval"},
    "ledger": set(),
    "train": {"eval", "interventions", "ledger", "configs"},
}


def imported_folders(source: str) -> set[str]:
    """The welfare_offsets.<folder> names a module's import statements reach."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "welfare_offsets" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("folder", sorted(MAY_IMPORT))
def test_each_folder_imports_only_what_lies_below_it(folder):
    for module in sorted((ROOT / folder).rglob("*.py")):
        reached = imported_folders(module.read_text(encoding="utf-8")) - {folder}
        assert reached <= MAY_IMPORT[folder], (
            f"{module.relative_to(ROOT)} imports welfare_offsets.{reached - MAY_IMPORT[folder]}"
        )


def test_the_check_sees_imports_inside_functions():
    source = "def f():\n    from welfare_offsets.ledger.location import SESSIONS_SUFFIX\n"
    assert imported_folders(source) == {"ledger"}
