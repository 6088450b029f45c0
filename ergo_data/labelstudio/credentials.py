"""The credentials of a local Label Studio data dir: made once, kept in an owner-only env file, reloaded.

Label Studio applies the admin account and its API token only on the first start of a data dir; a new
token in the environment later is silently ignored and every call gets 401. So ``ergo ls serve`` owns
them: on the first start it takes LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN from the environment
(all three) or makes new ones, and writes ``DATA_DIR/credentials.env`` (mode 0600); every later start
reads that file, checks the token against the running server and prints ``source DATA_DIR/credentials.env``.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> creds, notes = initial_credentials(d, env={})
>>> path = write_credentials(d, creds, "http://127.0.0.1:8080")
>>> oct(path.stat().st_mode & 0o777), load_credentials(d) == creds
('0o600', True)
>>> read_env_file(path)["LABEL_STUDIO_URL"]
'http://127.0.0.1:8080'
"""

from __future__ import annotations

import ast
import os
import secrets
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ergo_data.core.errors import ErgoError

CREDENTIALS_FILE = "credentials.env"
DEFAULT_DATA_DIR = Path(".ls-data")
DATA_DIR_ENV = "ERGO_LS_DATA_DIR"  # set by the credentials file: where a 401 hint looks first
DEFAULT_USERNAME = "admin@localhost"
FIRST_START_ENV = ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN")


class CredentialsError(ErgoError, RuntimeError):
    """The data dir's credentials cannot be made, read or checked; the message says what to do."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str | None  # None: a data dir made without ergo, whose password ergo never saw
    token: str


def credentials_path(data_dir: Path) -> Path:
    return Path(data_dir) / CREDENTIALS_FILE


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY -> value`` of the ``export KEY=VALUE`` lines of an env file (comments skipped)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            out[key] = value
    return out


def load_credentials(data_dir: Path) -> Credentials | None:
    """The data dir's stored credentials, or None if it has no credentials file."""
    path = credentials_path(data_dir)
    if not path.is_file():
        return None
    values = read_env_file(path)
    if not values.get("LABEL_STUDIO_USERNAME") or not values.get("LABEL_STUDIO_API_KEY"):
        raise CredentialsError(
            f"{path} lacks LABEL_STUDIO_USERNAME or LABEL_STUDIO_API_KEY: delete it and run `ergo ls serve` "
            "again (it reads the admin's token from the database when LABEL_STUDIO_USERNAME is set)"
        )
    return Credentials(
        values["LABEL_STUDIO_USERNAME"], values.get("LABEL_STUDIO_PASSWORD"), values["LABEL_STUDIO_API_KEY"]
    )


def initial_credentials(
    data_dir: Path, db_exists: bool = False, env: Mapping[str, str] | None = None
) -> tuple[Credentials, list[str]]:
    """Credentials for a start of ``data_dir``: the stored ones, else the environment's, else new ones.

    Returns notes for the user (e.g. an environment token that the data dir ignores). A data dir with
    a database but no credentials file (started without ergo) keeps its token: ``token`` is then ""
    and ``verified_token`` reads it from the database after the start.
    """
    env = os.environ if env is None else env
    notes: list[str] = []
    stored = load_credentials(data_dir)
    if stored is not None:
        _owner_only(credentials_path(data_dir), notes)
        for name, value in (("LABEL_STUDIO_USER_TOKEN", stored.token), ("LABEL_STUDIO_API_KEY", stored.token)):
            if env.get(name) and env[name] != value:
                notes.append(
                    f"{name} in your environment is not this data dir's token and is ignored "
                    f"(Label Studio takes a token on a data dir's first start only): "
                    f"`source {credentials_path(data_dir)}`"
                )
        return stored, notes
    given = {n: env.get(n) for n in FIRST_START_ENV}
    if db_exists:
        if not given["LABEL_STUDIO_USERNAME"]:
            raise CredentialsError(
                f"{data_dir} holds a Label Studio database but no {CREDENTIALS_FILE} (it was started without "
                "ergo): set LABEL_STUDIO_USERNAME to its admin's email so `ergo ls serve` can read the "
                "token from the database, or pass another --data-dir"
            )
        return Credentials(given["LABEL_STUDIO_USERNAME"], given["LABEL_STUDIO_PASSWORD"], ""), notes
    if all(given.values()):
        if len(given["LABEL_STUDIO_USER_TOKEN"] or "") <= 5:
            raise CredentialsError("LABEL_STUDIO_USER_TOKEN must be longer than 5 characters")
        notes.append("admin account and token taken from LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN")
        return Credentials(*(given[n] or "" for n in FIRST_START_ENV)), notes
    creds = Credentials(DEFAULT_USERNAME, secrets.token_urlsafe(18), secrets.token_hex(20))
    notes.append(f"new admin account {creds.username} with a new password and API token")
    return creds, notes


def _owner_only(path: Path, notes: list[str]) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o600)
        notes.append(f"{path} was readable by others (mode {oct(mode)}): set to 0600")


def write_credentials(data_dir: Path, creds: Credentials, url: str) -> Path:
    """Write ``DATA_DIR/credentials.env`` (mode 0600, atomically) for ``source``; returns its path."""
    path = credentials_path(data_dir)
    data_dir = path.parent.resolve()
    values = {
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": creds.token,
        "LABEL_STUDIO_USERNAME": creds.username,
        **({"LABEL_STUDIO_PASSWORD": creds.password} if creds.password else {}),
        DATA_DIR_ENV: str(data_dir),
    }
    lines = [
        "# Label Studio credentials of this data dir, made by `ergo ls serve` (owner-only: keep it private).",
        f"# Load them into a shell:  source {shlex.quote(str(path.resolve()))}",
        *(f"export {k}={shlex.quote(v)}" for k, v in values.items()),
    ]
    if not creds.password:
        lines.append("# the admin's password is not known to ergo (this data dir was started without it)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, ("\n".join(lines) + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def token_works(url: str, token: str, timeout: float = 10.0) -> bool:
    if not token:
        return False
    r = httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=timeout)
    return r.status_code == 200


def database_token(label_studio: Path, env: Mapping[str, str], username: str) -> str:
    """The API token the database holds for ``username`` (``label-studio user --username``)."""
    done = subprocess.run(
        [str(label_studio), "user", "--username", username],
        env=dict(env), capture_output=True, text=True, check=False, timeout=300,
    )
    info = next((ln for ln in done.stdout.splitlines() if ln.startswith("{")), None)
    try:
        token = ast.literal_eval(info)["token"] if info else None
    except (ValueError, SyntaxError, KeyError, TypeError):
        token = None
    if done.returncode != 0 or not token:
        raise CredentialsError(
            f"cannot read the API token of {username!r} from the data dir's database "
            f"(`label-studio user --username {username}` exit {done.returncode}): is that the admin's email? "
            f"{(done.stderr or done.stdout)[-500:]}"
        )
    return token


# ---- a 401 against a local server: which token does it hold? --------------------------------------
def _same_server(a: str, b: str) -> bool:
    ua, ub = urlsplit(a), urlsplit(b)
    loopback = {"127.0.0.1", "localhost", "::1"}
    host_a = "127.0.0.1" if ua.hostname in loopback else ua.hostname
    host_b = "127.0.0.1" if ub.hostname in loopback else ub.hostname
    return (host_a, ua.port) == (host_b, ub.port)


def local_token_hint(url: str, api_key: str, env: Mapping[str, str] | None = None) -> str | None:
    """For a 401 from a server on this machine: where its token is, and how it differs from ``api_key``."""
    env = os.environ if env is None else env
    if urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        return None
    candidates = [Path(env[DATA_DIR_ENV])] if env.get(DATA_DIR_ENV) else []
    candidates.append(DEFAULT_DATA_DIR)
    for data_dir in candidates:
        path = credentials_path(data_dir)
        try:
            values = read_env_file(path)
        except (OSError, ValueError):
            continue
        token = values.get("LABEL_STUDIO_API_KEY", "")
        if not _same_server(values.get("LABEL_STUDIO_URL", ""), url) or not token:
            continue
        if token == api_key:
            return (
                f"That is the token in {path}, but the server refuses it: its token was changed "
                f"(Account & Settings); restart it with `ergo ls serve --data-dir {data_dir}`, which reads "
                "the current token from its database and updates the file."
            )
        return (
            f"The server of data dir {data_dir} holds the token in {path} (it begins {token[:4]!r}; "
            f"yours begins {api_key[:4]!r}): run `source {path}`."
        )
    return (
        "If `ergo ls serve` runs this server, its token is in DATA_DIR/credentials.env "
        f"(default {DEFAULT_DATA_DIR}/): run `source DATA_DIR/credentials.env`."
    )
