"""A throwaway PostgreSQL cluster for the tests: made by initdb in a new temporary folder, served on a
Unix socket in that folder with trust authentication, stopped and deleted at the end.

The server refuses to run as root, and the tests run as root in CI: then the folder belongs to `nobody`
and the server's programs run as that user (runuser), while the tests, as root, still reach the socket.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

UNPRIVILEGED_USER = "nobody"
SUPERUSER = "welfare"  # the cluster's superuser role, owner of every test ledger


def find_binaries() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    folders = [str(Path(on_path).parent)] if on_path else []
    folders += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name), reverse=True)
    return next((Path(f) for f in folders if all((Path(f) / p).exists() for p in ("initdb", "pg_ctl"))), None)


def why_not_available() -> str | None:
    """Why no cluster can start here, or None if one can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'welfare-offsets[postgres]')"
    if find_binaries() is None:
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return f"running as root, and there is no {UNPRIVILEGED_USER!r} user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root, and runuser (util-linux) is not installed to run the server as another user"
    return None


class Server:
    def __init__(self) -> None:
        self.binaries = find_binaries()
        # short, as a socket path has at most 107 bytes; as root, in /tmp, which the server's user can reach
        self.folder = Path(tempfile.mkdtemp(prefix="welfare-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", UNPRIVILEGED_USER, "--"]
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    @property
    def data(self) -> str:
        return str(self.folder / "data")

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(self.binaries / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-k {self.folder} -c listen_addresses='' -c max_connections=200"
        self._run("pg_ctl", "-D", self.data, "-l", str(self.folder / "server.log"), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: the server's processes quit at once, without a checkpoint."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, role: str = SUPERUSER, schema: str | None = None) -> str:
        url = f"postgresql://{role}@/postgres?host={self.folder}"
        return url if schema is None else f"{url}&options=-csearch_path%3D{schema}"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
