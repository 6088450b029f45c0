"""Session fixture: a real Label Studio server on 127.0.0.1, on a free port, with a throwaway data dir.

It installs ``.venv-ls`` once (``scripts/install_ls.sh``, cached by its stamp; needs PyPI the first
time), seeds the data dir with a migrated empty database (built once per install), makes the data dir's
own credentials as ``ergo ls serve`` does (``settings_for_data_dir``: a new admin and token, nothing taken
from the environment), starts the server, waits for ``/health``, writes ``DATA_DIR/credentials.env``
(``claim_credentials``) and stops the server (SIGTERM, then SIGKILL) at the end. It is imported by the root conftest.py, so every module shares one server per session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ergo_data.core.boxes import Box
from ergo_data.labelstudio.client import Connection
from ergo_data.labelstudio.push import rectangle_result
from ergo_data.labelstudio.server import (
    DEFAULT_VENV,
    LabelStudioServer,
    LabelStudioServerError,
    free_port,
    install,
    settings_for_data_dir,
)


@dataclass
class LSTestServer:
    url: str
    username: str
    password: str
    token: str
    data_dir: Path
    server: LabelStudioServer

    def connection(self, token: str | None = None, timeout: float = 60.0) -> Connection:
        return Connection(self.url, token or self.token, timeout)

    def sign_up(self, email: str, password: str) -> str:
        """Create an account through the web sign-up form, as an annotator would; returns its API token."""
        with httpx.Client(base_url=self.url, follow_redirects=False, timeout=60) as web:
            web.get("/user/signup/").raise_for_status()
            answer = web.post(
                "/user/signup/",
                headers={"Referer": f"{self.url}/user/signup/"},
                data={
                    "email": email,
                    "password": password,
                    "csrfmiddlewaretoken": web.cookies["csrftoken"],
                    "how_find_us": "",
                    "allow_newsletters": "false",
                },
            )
            if answer.status_code != 302:
                errors = re.findall(r'class="[^"]*error[^"]*">\s*([^<]+)', answer.text)
                raise AssertionError(f"sign-up of {email} failed ({answer.status_code}): {errors}")
            token = web.get("/api/current-user/token")
            token.raise_for_status()
            return token.json()["token"]


def rectangle(box: Box, size: tuple[int, int], rid: str, rotation: float = 0.0) -> dict:
    """A RectangleLabels result as the Label Studio editor submits it (percent of the image)."""
    return rectangle_result(box, size, rid, rotation)


def choice(name: str, value: str) -> dict:
    return {
        "from_name": name,
        "to_name": "image" if name == "region_answerable" else "question",
        "type": "choices",
        "value": {"choices": [value]},
    }


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory):
    try:
        install(DEFAULT_VENV)
    except LabelStudioServerError as e:
        pytest.fail(f"cannot install the Label Studio server for the integration tests: {e}")
    root = tmp_path_factory.mktemp("label-studio")
    (root / "files").mkdir()
    settings, _ = settings_for_data_dir(root / "data", port=free_port(), document_root=root / "files", env={})
    server = LabelStudioServer(settings, DEFAULT_VENV)
    try:
        server.start(timeout=600)
        server.claim_credentials()
    except LabelStudioServerError as e:
        server.stop()
        pytest.fail(str(e))
    try:
        yield LSTestServer(
            settings.url, settings.username, settings.password, settings.token, settings.data_dir, server
        )
    finally:
        server.stop()
