"""``ergo ls serve`` owns its data dir's credentials: made once, owner-only, reloaded; a 401 says which token.

The integration test runs the real command (a subprocess, as a user would in their own terminal) three
times on one data dir against the real server; the other tests check the credentials file without one.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.labelstudio.credentials import (
    DATA_DIR_ENV,
    CredentialsError,
    initial_credentials,
    load_credentials,
    local_token_hint,
    read_env_file,
    write_credentials,
)
from ergo_data.labelstudio.server import DEFAULT_VENV, free_port, install
from tests.support.browser import login_cookies
from tests.support.paths import ROOT

ERGO = Path(sys.executable).with_name("ergo")


def test_first_start_takes_all_three_from_the_environment_or_makes_new_ones(tmp_path):
    env = {"LABEL_STUDIO_USERNAME": "me@example.com", "LABEL_STUDIO_PASSWORD": "pw with 'quotes' $x",
           "LABEL_STUDIO_USER_TOKEN": "t0ken-123456"}
    creds, _ = initial_credentials(tmp_path / "a", env=env)
    assert (creds.username, creds.password, creds.token) == ("me@example.com", env["LABEL_STUDIO_PASSWORD"],
                                                             "t0ken-123456")
    path = write_credentials(tmp_path, creds, "http://127.0.0.1:8080")
    assert oct(path.stat().st_mode & 0o777) == "0o600" and load_credentials(tmp_path) == creds
    # the file is what a shell gets from `source`
    shell = subprocess.run(["bash", "-c", f"source {path} && printf %s \"$LABEL_STUDIO_PASSWORD\""],
                           capture_output=True, text=True, check=True)
    assert shell.stdout == env["LABEL_STUDIO_PASSWORD"]

    made, notes = initial_credentials(tmp_path / "b", env={"LABEL_STUDIO_USERNAME": "only@example.com"})
    assert made.username == "admin@localhost" and len(made.token) == 40 and made.password
    assert "new admin account" in notes[0]
    with pytest.raises(CredentialsError, match="longer than 5"):
        initial_credentials(tmp_path / "c", env={**env, "LABEL_STUDIO_USER_TOKEN": "abc"})


def test_stored_credentials_win_and_a_different_env_token_is_named(tmp_path):
    creds, _ = initial_credentials(tmp_path, env={})
    write_credentials(tmp_path, creds, "http://127.0.0.1:8080").chmod(0o644)
    again, notes = initial_credentials(tmp_path, db_exists=True, env={"LABEL_STUDIO_USER_TOKEN": "another-token"})
    assert again == creds
    assert any("readable by others" in n for n in notes)
    assert oct((tmp_path / "credentials.env").stat().st_mode & 0o777) == "0o600"
    assert any("LABEL_STUDIO_USER_TOKEN in your environment is not this data dir's token" in n for n in notes)


def test_a_database_without_credentials_needs_the_admin_email(tmp_path):
    with pytest.raises(CredentialsError, match="LABEL_STUDIO_USERNAME"):
        initial_credentials(tmp_path, db_exists=True, env={})
    creds, _ = initial_credentials(tmp_path, db_exists=True, env={"LABEL_STUDIO_USERNAME": "old@example.com"})
    assert (creds.username, creds.token) == ("old@example.com", "")  # read from the database after the start


def test_401_hint_names_the_data_dirs_file(tmp_path):
    creds, _ = initial_credentials(tmp_path, env={})
    path = write_credentials(tmp_path, creds, "http://localhost:8123")
    env = {DATA_DIR_ENV: str(tmp_path)}
    hint = local_token_hint("http://127.0.0.1:8123", "wrong-token", env)
    assert str(path) in hint and f"begins {creds.token[:4]!r}" in hint and "source" in hint
    assert "refuses it" in local_token_hint("http://127.0.0.1:8123", creds.token, env)
    assert "DATA_DIR/credentials.env" in local_token_hint("http://127.0.0.1:9999", "x", env)  # another server
    assert local_token_hint("https://ls.example.com", "x", env) is None


class Serve:
    """``ergo ls serve`` in a subprocess, read line by line until it is up; SIGTERM stops it."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(ERGO), "ls", "serve", "--data-dir", str(data_dir), "--port", str(port)],
            env={**env, "COLUMNS": "250"}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
        )
        self.output = ""
        deadline = time.monotonic() + 300
        while "Ctrl-C stops the server" not in self.output:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"`ergo ls serve` did not come up:\n{self.output}")
            if select.select([self.proc.stdout], [], [], 1.0)[0]:  # unbuffered: select sees every byte
                self.output += os.read(self.proc.stdout.fileno(), 1 << 16).decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.output += self.proc.stdout.read().decode(errors="replace")


def whoami(url: str, token: str) -> int:
    return httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=30).status_code


@pytest.mark.integration
def test_serve_keeps_one_token_per_data_dir_across_restarts(tmp_path):
    install(DEFAULT_VENV)
    data_dir, port = tmp_path / "ls-data", free_port()
    url = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", DATA_DIR_ENV))}
    file = data_dir / "credentials.env"

    first = Serve(data_dir, port, base)
    try:
        assert f"source {file}" in first.output
        values = read_env_file(file)
        token = values["LABEL_STUDIO_API_KEY"]
        assert oct(file.stat().st_mode & 0o777) == "0o600"
        assert values["LABEL_STUDIO_URL"] == url and values[DATA_DIR_ENV] == str(data_dir)
        assert whoami(url, token) == 200
        login_cookies(url, values["LABEL_STUDIO_USERNAME"], values["LABEL_STUDIO_PASSWORD"])  # the web login
    finally:
        first.stop()

    # the README's old way: a fresh random token exported before every start. It is ignored, and said so.
    second = Serve(data_dir, port, {**base, "LABEL_STUDIO_USER_TOKEN": "a-new-random-token"})
    try:
        assert "LABEL_STUDIO_USER_TOKEN in your environment is not this data dir's token" in second.output
        assert read_env_file(file)["LABEL_STUDIO_API_KEY"] == token and whoami(url, token) == 200
        assert whoami(url, "a-new-random-token") == 401
        res = CliRunner().invoke(app, ["ls", "pull", "--project", "anything", "--out", str(tmp_path / "o")],
                                 env={"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": "a-new-random-token",
                                      DATA_DIR_ENV: str(data_dir)})
        assert res.exit_code == 1 and "401" in res.output
        assert f"source {file}" in " ".join(res.output.split()) and repr(token[:4]) in res.output
        # the token reset in the web UI (Account & Settings): the file is now stale
        reset = httpx.post(f"{url}/api/current-user/reset-token/", headers={"Authorization": f"Token {token}"},
                           timeout=30)
        new_token = reset.json()["token"]
        assert new_token != token and whoami(url, token) == 401
    finally:
        second.stop()

    third = Serve(data_dir, port, base)  # reads the current token from the database and updates the file
    try:
        assert "stored token was not the server's" in third.output
        assert read_env_file(file)["LABEL_STUDIO_API_KEY"] == new_token and whoami(url, new_token) == 200
    finally:
        third.stop()
    assert third.proc.returncode == 0, third.output
