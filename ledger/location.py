"""Where the ledger lives: `--ledger PATH`, else $WELFARE_LEDGER, else the user's data directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "WELFARE_LEDGER"


def default_ledger_path(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get(ENV_VAR):
        return Path(environ[ENV_VAR]).expanduser()
    data_home = environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "welfare-offsets" / "ledger.sqlite"


def resolve_ledger_path(explicit: str | os.PathLike | None) -> Path:
    return Path(explicit).expanduser() if explicit else default_ledger_path()
