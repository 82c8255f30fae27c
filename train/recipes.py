"""The recipes that ship inside the package (welfare_offsets.configs), found by name.

`--config offset/lora_sft` (or `offset/lora_sft.yaml`) names a packaged recipe, so every command works
from a plain `pip install`, outside a clone. A path that exists always wins over a name, so a user's own
`offset/lora_sft.yaml` is read as the file it is, whether named with or without .yaml. Anything else that
does not exist is passed on as a path, for the loader to report as a file it cannot read.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError

PACKAGE = "welfare_offsets.configs"
SUFFIX = ".yaml"


class RecipeError(InputError):
    """A recipe name that no packaged recipe has; the message lists those there are."""


def packaged_recipes() -> dict[str, Path]:
    """Every packaged recipe, `group/name` (no suffix) -> its file, in name order."""
    root = resources.files(PACKAGE)
    found = {}
    for group in root.iterdir():
        if group.is_dir() and not group.name.startswith(("_", ".")):
            for item in group.iterdir():
                if item.is_file() and item.name.endswith(SUFFIX):
                    found[f"{group.name}/{item.name.removesuffix(SUFFIX)}"] = Path(str(item))
    return dict(sorted(found.items()))


def recipe_path(name: str) -> Path:
    """The file of packaged recipe `name` (`offset/lora_sft`, with or without .yaml), else RecipeError."""
    recipes = packaged_recipes()
    key = name.removesuffix(SUFFIX)
    if key in recipes:
        return recipes[key]
    close = difflib.get_close_matches(key, recipes, n=1) or [k for k in recipes if k.endswith(f"/{key}")]
    hint = f" Did you mean {close[0]}?" if close else ""
    raise RecipeError(
        f"{name!r} is not a file here, nor a packaged recipe.{hint} Packaged recipes: "
        f"{', '.join(recipes)} (`welfare recipes` describes them)."
    )


def resolve_config(value: str) -> str:
    """What `--config value` reads: an existing path as given; a recipe name as the file of that name here
    (`eval/default` is ./eval/default.yaml) if there is one, else as its packaged file."""
    if os.path.lexists(os.path.expanduser(value)) or not _looks_like_name(value):
        return value
    local = value.removesuffix(SUFFIX) + SUFFIX
    return local if os.path.lexists(local) else str(recipe_path(value))


def description(path: Path) -> str:
    """A recipe's one-line description: its first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _looks_like_name(value: str) -> bool:
    """`group/name` or `name` (optionally .yaml): relative, at most one folder, no `.`/`~` in front."""
    parts = value.split("/")
    return 0 < len(parts) <= 2 and all(parts) and not value.startswith((".", "~")) and "\\" not in value
