"""A throwaway PostgreSQL server for tests, from the installed server binaries, on a free port.

pytest-postgresql cannot be used as root (PostgreSQL refuses to run as root and the library does not
switch users), and CI here runs as root: so as root every server command runs as the `postgres` system
user, in a data folder that user owns.

The server listens on 127.0.0.1, where every account of the machine reaches it: its superuser `postgres` has a
random password (scram-sha-256), which only the PostgresServer object and the URLs it hands out carry, so another
account (`nobody`) gets nothing of its data nor, as superuser, a shell as the server's account (COPY TO PROGRAM).
The Unix socket, in the server's 0700 data folder, is `peer`: only the server's own account (`postgres` under
root) gets in there without the password, and that account owns the data files anyway.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL

from shopmesh_chassis.local_stack import make_private_folder, write_private_file
from shopmesh_chassis.testing import free_port


def postgres_bin() -> Path:
    """The newest installed server's bin folder (or $POSTGRES_BIN); a clear error when there is none."""
    if configured := os.environ.get("POSTGRES_BIN"):
        return Path(configured)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin): "
            "install them (Debian: apt-get install postgresql-15) or set POSTGRES_BIN"
        )
    return candidates[-1].parent


# How the official postgres image's databases sort text (initdb under LANG=en_US.utf8): a language's order,
# which passes over punctuation such as '_' at first (prod_teapot before prod_tea_set), where Python and
# SQLite compare code points. Test databases sort that way too, so that code mixing the two orders fails
# here rather than in production. glibc's en_US locale is not installed here; ICU's en-US with punctuation
# "shifted" (ignored at the first levels) orders ids as it does.
LANGUAGE_COLLATION = "en-US-u-ka-shifted"


# Sessions of the current database waiting on a lock another transaction holds: how a test knows a concurrent
# transaction has reached the point where it waits (append "AND query LIKE ..." to name which).
WAITING_ON_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)

# A name PostgreSQL takes unquoted and keeps as it is: lowercase (an unquoted identifier is folded to it), at most
# NAMEDATALEN - 1 bytes (longer ones are cut short).
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

SUPERUSER = "postgres"
# The superuser's password in libpq's password file format, beside the data (removed with it), for a person or
# a test that connects to a server it did not start (`make run --postgres`'s): `PGPASSFILE=<it> psql ...`.
PASSFILE_NAME = "shopmesh.pgpass"


@dataclass(frozen=True)
class PostgresServer:
    port: int
    data_dir: Path
    bin_dir: Path
    # The superuser's; kept out of the repr, which test failures and logs may show.
    password: str = field(repr=False)
    # The databases `create_database` made, in order, for `drop_databases`.
    created: list[str] = field(default_factory=list, repr=False, compare=False)

    def url(
        self,
        database: str = "postgres",
        *,
        user: str = SUPERUSER,
        password: str | None = None,
        driver: str = "postgresql+asyncpg",
    ) -> str:
        """The URL of `database` on this server, as `user` (default: the superuser, with its password; another
        role's `password` is the caller's), for `driver` (`postgresql` for asyncpg.connect or libpq)."""
        if password is None and user == SUPERUSER:
            password = self.password
        url = URL.create(driver, username=user, password=password, host="127.0.0.1", port=self.port, database=database)
        return url.render_as_string(hide_password=False)

    @property
    def passfile(self) -> Path:
        """The superuser's password as libpq and asyncpg read it (`PGPASSFILE`, asyncpg's `passfile`)."""
        return self.data_dir / PASSFILE_NAME

    def create_database(self, icu_locale: str = LANGUAGE_COLLATION, *, name: str | None = None) -> str:
        """A new empty database on this server, sorting text by `icu_locale`; returns its SQLAlchemy
        (asyncpg) URL, the superuser's password in it. Named `name` (a lowercase SQL identifier, so that psql's
        `-d` and SQL take it unquoted; ValueError otherwise), else `test_<random>`: test suites share one server
        between tests, a person looking for a service's data looks for its name (`make run --postgres`)."""
        if name is None:
            name = f"test_{uuid.uuid4().hex[:12]}"
        elif not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: lowercase letters, digits and _ (not first), at most 63")
        _run(
            self.bin_dir,
            "createdb",
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "--no-password"),
            *("--template=template0", "--locale=C.UTF-8", "--locale-provider=icu", f"--icu-locale={icu_locale}"),
            name,
            password=self.password,
        )
        self.created.append(name)
        return self.url(name)

    def drop_databases(self, names: list[str]) -> None:
        """Drop `names`, cutting their connections (DROP DATABASE ... WITH (FORCE)); one gone already is no error.

        Each database is a copy of template0, some 8 MiB in ~300 files: a worker of the suite made hundreds and
        kept them to the end, gigabytes the kernel wrote back to disk during the run and that the server's
        removal then deleted file by file, for a minute and more at the very end of the run."""
        if not names:
            return
        self._psql(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names))

    def refuse_connections(self, name: str) -> None:
        """Have database `name` refuse every new connection (SQLSTATE 55000) and cut those it has, as an
        operator's `ALTER DATABASE ... ALLOW_CONNECTIONS false` does while the server stays up."""
        self._psql(
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )

    def allow_connections(self, name: str) -> None:
        self._psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    def _psql(self, *statements: str) -> None:
        _run(
            self.bin_dir,
            "psql",
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "--no-password", "-d", "postgres"),
            *("-v", "ON_ERROR_STOP=1", "-q", *(arg for statement in statements for arg in ("-c", statement))),
            password=self.password,
        )

    def stop(self) -> None:
        """Shut the server down at once, cutting its connections, as a crash or a failover would."""
        _run(self.bin_dir, "pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start it again, same port and data."""
        _start(self.bin_dir, self.data_dir, self.port)


def server_options(data_dir: Path, port: int) -> list[str]:
    return ["-p", str(port), "-k", str(data_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "max_connections=200"]  # fmt: skip


def _start(bin_dir: Path, data_dir: Path, port: int) -> None:
    options = " ".join(server_options(data_dir, port))
    _run(bin_dir, "pg_ctl", "-D", str(data_dir), "-o", options, "-l", str(data_dir / "server.log"), "-w", "start")


def server_argv(server: PostgresServer) -> list[str]:
    """`postgres` in the foreground on `server`'s data and port, for a caller that runs it as its own child
    (as the `postgres` user when root: PostgreSQL refuses to run as root)."""
    return [str(server.bin_dir / "postgres"), "-D", str(server.data_dir), *server_options(server.data_dir, server.port)]


def _run(bin_dir: Path, tool: str, *args: str, password: str | None = None) -> None:
    command = [str(bin_dir / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    # In the environment (runuser keeps it), which only this account and root may read: not on the command
    # line, which `ps` shows every account.
    env = None if password is None else {**os.environ, "PGPASSWORD": password}
    subprocess.run(command, check=True, capture_output=True, timeout=60, env=env)


def _initdb(bin_dir: Path, data_dir: Path, password: str) -> None:
    """initdb with `password` for the superuser, read from a file of the server's account, 0600, removed after
    (initdb takes it from a file or a prompt only)."""
    fd, name = tempfile.mkstemp(prefix="shopmesh-pg-password-")
    pwfile = Path(name)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        _run(
            bin_dir,
            "initdb",
            *("-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}", "--no-sync"),
            *("--auth-host=scram-sha-256", "--auth-local=peer"),
        )
    finally:
        pwfile.unlink(missing_ok=True)


@contextlib.contextmanager
def initialized_server(prefix: str = "shopmesh-pg-") -> Iterator[PostgresServer]:
    """A server's data folder (initdb, a random password for the superuser, fsync off: it is thrown away) on a
    free port, not started; removed afterwards. The folder's name starts with `prefix`."""
    bin_dir = postgres_bin()
    # Under /tmp rather than pytest's tmp_path, whose root-only parents the postgres user cannot enter.
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(data_dir, account.pw_uid, account.pw_gid)
    make_private_folder(data_dir)  # PostgreSQL refuses to start on a data folder others may read
    port = free_port()
    password = secrets.token_urlsafe(24)
    try:
        _initdb(bin_dir, data_dir, password)
        server = PostgresServer(port=port, data_dir=data_dir, bin_dir=bin_dir, password=password)
        # In the data folder mkdtemp just made (0700: other accounts are kept out, and no file is there to
        # replace), 0600 from its creation: libpq ignores a password file others may read.
        write_private_file(server.passfile, f"127.0.0.1:{server.port}:*:{SUPERUSER}:{server.password}\n".encode())
    except subprocess.CalledProcessError as error:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"cannot initialise PostgreSQL: {error.stderr.decode(errors='replace')}") from None
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server (initdb, a random superuser password, fsync off: it is thrown away) and remove it
    afterwards."""
    with initialized_server() as server:
        try:
            _start(server.bin_dir, server.data_dir, server.port)
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"cannot start PostgreSQL: {error.stderr.decode(errors='replace')}") from None
        try:
            yield server
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run(server.bin_dir, "pg_ctl", "-D", str(server.data_dir), "-m", "immediate", "stop")
