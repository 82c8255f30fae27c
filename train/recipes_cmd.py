"""`welfare recipes`: the packaged recipes, by name; `path NAME` prints a file, `cp NAME DEST` copies one.

A name works wherever `--config` is taken (`welfare offset lora --config offset/lora_sft`). accelerate's
`--config_file` wants a file path: `accelerate launch --config_file "$(welfare recipes path accelerate/ddp)" ...`.
To change a recipe, copy it (`welfare recipes cp offset/lora_sft my_lora.yaml`) and pass the copy.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from welfare_offsets.eval.common.output_folder import OutputError, output_path
from welfare_offsets.train.recipes import description, packaged_recipes, recipe_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="welfare recipes", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="list the packaged recipes (the default)")
    path = commands.add_parser("path", help="print the file of a packaged recipe")
    path.add_argument("name", help="a recipe name, e.g. accelerate/ddp")
    copy = commands.add_parser("cp", help="copy a packaged recipe to edit (never overwrites anything)")
    copy.add_argument("name", help="a recipe name, e.g. offset/lora_sft")
    copy.add_argument("dest", help="a new file, or an existing folder to copy into")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(recipe_path(args.name))
    elif args.command == "cp":
        print(f"copied {args.name} to {copy_recipe(args.name, args.dest)}")
    else:
        _list()
    return 0


def _list() -> None:
    recipes = packaged_recipes()
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {description(path)}")
    print(
        "\nUse a name with --config (welfare offset lora --config offset/lora_sft); "
        "`welfare recipes cp NAME DEST` copies one to edit.",
        file=sys.stderr,
    )


def copy_recipe(name: str, dest: str | os.PathLike) -> Path:
    """Copy packaged recipe `name` to `dest` (a new file, or into an existing folder under its own name).
    Refuses, writing nothing, an existing file, a link, a FIFO or device, and any part of a ledger."""
    from welfare_offsets.ledger.location import check_not_ledger

    source = recipe_path(name)
    target = output_path(dest)
    if _kind(target) == "a folder":
        target = target / source.name
    kind = _kind(target)
    if kind is not None:
        raise OutputError(f"{target} already exists ({kind}); nothing was written: choose a new file name")
    check_not_ledger(target, what="recipe copy")
    if not target.parent.is_dir():
        raise OutputError(f"{target.parent} is not a folder; create it first or choose another destination")
    try:  # O_EXCL: a file that appeared meanwhile is refused too, never overwritten
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except FileExistsError:
        raise OutputError(f"{target} already exists; nothing was written: choose a new file name") from None
    with os.fdopen(fd, "wb") as f:
        f.write(source.read_bytes())
    return target


def _kind(path: Path) -> str | None:
    """None where nothing is at `path` (links are not followed), else what is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a file" if stat.S_ISREG(mode) else "not a regular file: a FIFO, device or socket"
