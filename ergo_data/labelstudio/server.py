"""Lifecycle of a local Label Studio server: install, seed a data dir, start on loopback, wait, stop.

Used by ``ergo ls serve`` and by the test fixture. The server lives in its own venv (``.venv-ls``,
made by ``scripts/install_ls.sh``) because its pins clash with the workbench's. The admin account and
its token belong to the data dir (``credentials.py``): ``settings_for_data_dir`` before the start,
``LabelStudioServer.claim_credentials`` after it.

>>> settings = ServerSettings(port=8080, data_dir=Path("/tmp/ls"), username="admin@example.com",
...                           password="secret-pass", token="my-token-123")
>>> settings.url
'http://127.0.0.1:8080'
>>> server_env(settings, base={})["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"]
'true'
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from ergo_data.core.errors import ErgoError
from ergo_data.labelstudio.credentials import (
    CREDENTIALS_FILE,
    Credentials,
    database_token,
    initial_credentials,
    token_works,
    write_credentials,
)

LS_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-ls"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_ls.sh"
DB_NAME = "label_studio.sqlite3"

# Runs inside the server's venv: apply Django migrations to LABEL_STUDIO_BASE_DATA_DIR, nothing else.
_MIGRATE = (
    "from label_studio.server import _setup_env, _apply_database_migrations; "
    "_setup_env(); _apply_database_migrations()"
)


class LabelStudioServerError(ErgoError, RuntimeError):
    """The server could not be installed, started or reached; the message says what to do."""


@dataclass
class ServerSettings:
    """Where and as whom the server runs. Admin user and token apply on the first start of ``data_dir``."""

    data_dir: Path
    username: str
    password: str
    token: str
    host: str = "127.0.0.1"
    port: int = 8080
    document_root: Path | None = None  # enables local-files serving below this folder

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def settings_for_data_dir(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    document_root: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[ServerSettings, list[str]]:
    """Settings of a start of ``data_dir`` with its own credentials (``credentials.py``), and notes for the user.

    Call it before the start: a data dir without a database yet is a first start.
    """
    creds, notes = initial_credentials(data_dir, db_exists=(Path(data_dir) / DB_NAME).exists(), env=env)
    settings = ServerSettings(
        data_dir, creds.username, creds.password or "", creds.token, host, port, document_root
    )
    return settings, notes


def server_env(settings: ServerSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the server process: data dir, admin, legacy tokens on, nothing phoning home."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(settings.data_dir),
            "LABEL_STUDIO_USERNAME": settings.username,
            "LABEL_STUDIO_PASSWORD": settings.password,
            "LABEL_STUDIO_USER_TOKEN": settings.token,
            # Without it every request with the token above is 401.
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
    )
    if settings.document_root is not None:
        env["LOCAL_FILES_SERVING_ENABLED"] = "true"
        env["LOCAL_FILES_DOCUMENT_ROOT"] = str(settings.document_root)
    return env


def label_studio_exe(venv: Path = DEFAULT_VENV) -> Path:
    exe = Path(venv) / "bin" / "label-studio"
    if not exe.is_file():
        raise LabelStudioServerError(
            f"no Label Studio server in {venv}: run scripts/install_ls.sh (creates .venv-ls, about a minute)"
        )
    return exe


def install(venv: Path = DEFAULT_VENV) -> Path:
    """Run ``scripts/install_ls.sh`` (a no-op once its stamp exists); returns the ``label-studio`` path."""
    if not (Path(venv) / f".installed-{LS_VERSION}").exists():
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), str(venv)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise LabelStudioServerError(
                f"scripts/install_ls.sh failed (exit {done.returncode}); it needs PyPI access:\n"
                f"{done.stderr[-2000:]}"
            )
    return label_studio_exe(venv)


def migrated_template(venv: Path = DEFAULT_VENV) -> Path:
    """An empty, fully migrated database, built once per install and kept in the venv.

    Migrations are most of a first start (over a minute of CPU); copying this file into a new data dir
    turns the first start into a restart. Users and tokens are not in it: they are created at start.
    """
    template = Path(venv) / f"ergo-template-{LS_VERSION}"
    if (template / DB_NAME).exists():
        return template
    building = template.with_name(f"{template.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(building),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
    )
    done = subprocess.run(
        [str(Path(venv) / "bin" / "python"), "-c", _MIGRATE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not (building / DB_NAME).exists():
        shutil.rmtree(building, ignore_errors=True)
        raise LabelStudioServerError(f"migrating a template database failed:\n{done.stderr[-2000:]}")
    try:
        building.rename(template)
    except OSError:  # another process finished first; its template is as good as ours
        shutil.rmtree(building, ignore_errors=True)
    return template


def seed_data_dir(data_dir: Path, venv: Path = DEFAULT_VENV) -> bool:
    """Copy the migrated template into a data dir that has no database yet; True if it did."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / DB_NAME).exists():
        return False
    shutil.copyfile(migrated_template(venv) / DB_NAME, data_dir / DB_NAME)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (httpx.HTTPError, ValueError):
        return False


class LabelStudioServer:
    """A ``label-studio start`` child process on loopback; use as a context manager.

    Starting one takes seconds (``tests/support/ls_server.py`` does, once per test session)::

        with LabelStudioServer(settings) as server:
            print(server.url)
    """

    def __init__(self, settings: ServerSettings, venv: Path = DEFAULT_VENV) -> None:
        self.settings = settings
        self.venv = Path(venv)
        self.proc: subprocess.Popen | None = None
        self.log_path = settings.data_dir / "server.log"

    @property
    def url(self) -> str:
        return self.settings.url

    def start(self, timeout: float = 300.0) -> Self:
        """Start and wait until ``/health`` answers; raises LabelStudioServerError with the log's tail."""
        s = self.settings
        exe = label_studio_exe(self.venv)
        # A busy port makes Label Studio silently take the next one: refuse instead.
        if port_in_use(s.host, s.port):
            raise LabelStudioServerError(
                f"port {s.port} on {s.host} is already in use: pick another with --port"
            )
        seed_data_dir(s.data_dir, self.venv)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(exe), "start", "--no-browser", "--internal-host", s.host, "-p", str(s.port)],
                env=server_env(s),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=s.data_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabelStudioServerError(
                    f"Label Studio exited with code {self.proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if is_healthy(self.url):
                return self
            time.sleep(0.5)
        self.stop()
        raise LabelStudioServerError(
            f"Label Studio did not answer {self.url}/health within {timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the server's process group, then SIGKILL if it is still there after ``grace`` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def claim_credentials(self) -> tuple[Path, list[str]]:
        """Once started: check the settings' token against the server (else read the database's) and write
        ``DATA_DIR/credentials.env`` (0600) with it and the URL; returns its path and notes for the user."""
        s, notes = self.settings, []
        if not token_works(self.url, s.token):
            token = database_token(label_studio_exe(self.venv), server_env(s), s.username)
            if s.token:
                notes.append(
                    f"the stored token was not the server's (changed in Account & Settings?): "
                    f"{CREDENTIALS_FILE} now holds the database's"
                )
            s.token = token
        creds = Credentials(s.username, s.password or None, s.token)
        return write_credentials(s.data_dir, creds, self.url), notes

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
