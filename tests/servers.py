"""Real servers on 127.0.0.1 for the tests, as on a cluster: PostgreSQL and `mlflow server`.

The fixtures are session-scoped (each server starts once per pytest run) and are registered
in conftest.py. PostgreSQL comes from the Debian packages; when its binaries are missing and
we are root (as in CI) they are installed with apt-get, otherwise the tests are skipped.

    postgres_url       postgresql+psycopg2://ddgan:PASS@127.0.0.1:PORT/optuna (Optuna storage)
    mlflow_server_uri  http://127.0.0.1:PORT, an MLflow server whose backend store is the
                       `mlflow` database of the same PostgreSQL and whose artifacts are
                       proxied (`mlflow-artifacts:/`) to a temporary directory

Helpers for the failure cases: `free_port`, `unreachable_postgres_url`, `bad_password_url`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

APP_ROLE = "ddgan"  # the role the study connects as: a password, no superuser rights
STARTUP_TIMEOUT_S = 60.0
APT_TIMEOUT_S = 900.0
LOG_TAIL_CHARS = 3000
PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the command and its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (free when asked; bind soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_postgres_url(database: str = "optuna") -> str:
    """A well-formed PostgreSQL URL for a port on which nothing listens (connection refused)."""
    return f"postgresql+psycopg2://{APP_ROLE}:not-the-password@127.0.0.1:{free_port()}/{database}"


def bad_password_url(url: str) -> str:
    """`url` with its password replaced by a wrong one (authentication fails)."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:wrong-{secrets.token_hex(4)}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as error:
        return f"<no log: {error}>"


# --------------------------------------------------------------------------- PostgreSQL


def find_postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(newest).parent


def install_postgres() -> Path:
    """apt-get the Debian `postgresql` package (root only) and return its bin directory.

    `apt-get update` comes first because a fresh image has empty package lists; if it fails
    (offline) the install is still tried against whatever lists are there.
    """
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=APT_TIMEOUT_S, check=False)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
        env=env, timeout=APT_TIMEOUT_S, capture_output=True, text=True,
    )
    bindir = find_postgres_bindir()
    if result.returncode != 0 or bindir is None:
        raise ServerStartError(
            f"apt-get install postgresql failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-LOG_TAIL_CHARS:]}"
        )
    return bindir


class PostgresServer:
    """A throw-away PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only.

    The superuser `postgres` reaches it only through the unix socket in the (0700) temporary
    directory; TCP connections need a password (scram-sha-256). Postgres refuses to run as
    root, so as root every server command runs as the `postgres` OS user.
    """

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ddgan-postgres-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres", group="postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = STARTUP_TIMEOUT_S) -> subprocess.CompletedProcess:
        command = [*self.as_postgres, *args]
        try:
            result = subprocess.run(
                command, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired as error:
            raise ServerStartError(
                f"{' '.join(command)} did not finish within {timeout:.0f} s\n"
                f"--- server log tail ---\n{_log_tail(self.log_path)}"
            ) from error
        if result.returncode != 0:
            raise ServerStartError(
                f"{' '.join(command)} failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-LOG_TAIL_CHARS:]}\n"
                f"--- server log tail ---\n{_log_tail(self.log_path)}"
            )
        return result

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--locale=C", "--encoding=UTF8",
            "--no-sync",
        )
        # No fsync (here and in initdb): a test cluster need not survive a power cut.
        options = (
            f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off"
        )
        for attempt in range(PORT_ATTEMPTS):  # another process may take our free port first
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "start", "-D", str(self.data_dir),
                    "-l", str(self.log_path), "-o", f"{options} -c port={self.port}",
                    "-w", "-t", str(int(STARTUP_TIMEOUT_S)),
                )
                break
            except ServerStartError as error:
                if "Address already in use" not in str(error) or attempt == PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        self._run(
            str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "10",
        )
        self.psql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{self.password}'")

    def psql(self, sql: str) -> str:
        """Run one SQL statement as the superuser over the unix socket."""
        return self._run(
            str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
            "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql,
        ).stdout

    def create_database(self, name: str) -> str:
        """Create database `name` owned by the app role; return its SQLAlchemy URL."""
        self.psql(f"CREATE DATABASE {name} OWNER {APP_ROLE}")
        return self.url(name)

    def url(self, database: str) -> str:
        return (
            f"postgresql+psycopg2://{APP_ROLE}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{database}"
        )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                          "-m", "fast", "-w", "-t", "30")
            except ServerStartError:
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def start_postgres() -> PostgresServer:
    """Find (or, as root, install) PostgreSQL and start a fresh cluster; skip if impossible."""
    bindir = find_postgres_bindir()
    if bindir is None:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL server binaries missing (/usr/lib/postgresql/*/bin/initdb) "
                        "and not root to apt-get install postgresql")
        bindir = install_postgres()
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL on 127.0.0.1 for the whole session; stopped and removed after."""
    if importlib.util.find_spec("psycopg2") is None:
        pytest.fail("psycopg2 is not installed: pip install -e '.[test,cluster]'", pytrace=False)
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of an empty `optuna` database (password auth over TCP)."""
    return postgres_server.create_database("optuna")


# --------------------------------------------------------------------------- MLflow server


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen, log_path: Path) -> None:
    """Poll `url` until it answers 200; fail with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"{url}: server exited with {process.returncode} before answering\n"
                f"--- log tail ---\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise ServerStartError(
        f"{url} did not answer within {timeout_s:.0f} s\n--- log tail ---\n{_log_tail(log_path)}"
    )


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group (mlflow server forks uvicorn), SIGKILL it after `grace_s`."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def mlflow_server_command(artifacts_dir: Path, port: int) -> list[str]:
    """`mlflow server` bound to loopback, one worker, artifacts proxied to `artifacts_dir`.

    The backend store URI holds a password, so it goes in $MLFLOW_BACKEND_STORE_URI (which
    the CLI reads) rather than on the command line, where `ps` would show it.
    """
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--serve-artifacts", "--artifacts-destination", str(artifacts_dir),
    ]


def start_mlflow_server(backend_store_uri: str, root: Path) -> tuple[subprocess.Popen, str]:
    """Start `mlflow server` (logging to root/server.log); return the process and its URI."""
    log_path = root / "server.log"
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        # The GenAI job runner would fork eight huey consumers (and leak a /dev/shm dir);
        # the study needs none of it and CI has two cores.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for attempt in range(PORT_ATTEMPTS):  # another process may take our free port first
        uri = f"http://127.0.0.1:{free_port()}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                mlflow_server_command(root / "artifacts", urlsplit(uri).port),
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so teardown reaches uvicorn too
            )
        try:
            wait_for_http(f"{uri}/health", STARTUP_TIMEOUT_S, process, log_path)
            return process, uri
        except ServerStartError as error:
            stop_process_group(process)
            if "address already in use" not in str(error) or attempt == PORT_ATTEMPTS - 1:
                raise
    raise ServerStartError(f"mlflow server: no free port after {PORT_ATTEMPTS} attempts")


@pytest.fixture(scope="session")
def mlflow_server_uri(postgres_server: PostgresServer) -> Iterator[str]:
    """http://127.0.0.1:PORT of a running `mlflow server` on the PostgreSQL `mlflow` database."""
    backend = postgres_server.create_database("mlflow")
    root = Path(tempfile.mkdtemp(prefix="ddgan-mlflow-"))
    try:
        process, uri = start_mlflow_server(backend, root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield uri
    finally:
        stop_process_group(process)
        shutil.rmtree(root, ignore_errors=True)
