"""Headless Chromium for browser checks: Debian's ``/usr/bin/chromium`` over the DevTools protocol.

Driven through ``--remote-debugging-pipe`` (file descriptors 3 and 4; no websocket library, no browser
download). ``login_cookies`` signs in to Label Studio through its web form; ``open_task`` shows a task in
the labeling editor as that user. Tests that need it skip where Chromium is absent (``needs_chromium``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPLY_TIMEOUT_S = 60

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless browser check skipped: /usr/bin/chromium is absent (apt-get install chromium to run it)",
)


class DevTools:
    """The DevTools protocol over Chromium's pipe: NUL-terminated JSON messages on fds 3 (in) and 4 (out)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1200) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: the fds Chromium expects
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            # preexec_fn only calls dup2 (safe enough with threads); pass_fds keeps 3 and 4 open in the child.
            pass_fds=(3, 4),
            preexec_fn=wire_fds,  # noqa: PLW1509
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._buffer = b""
        self.session: str | None = None

    def call(self, method: str, **params):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._from_browser], [], [], REPLY_TIMEOUT_S)[0]:
                    raise RuntimeError(f"Chromium did not answer {method} within {REPLY_TIMEOUT_S} s")
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open_page(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close")
            self.proc.wait(10)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


def login_cookies(url: str, email: str, password: str) -> dict[str, str]:
    with httpx.Client(base_url=url, follow_redirects=False, timeout=60) as web:
        web.get("/user/login/").raise_for_status()
        answer = web.post(
            "/user/login/",
            headers={"Referer": f"{url}/user/login/"},
            data={"email": email, "password": password, "csrfmiddlewaretoken": web.cookies["csrftoken"]},
        )
        assert answer.status_code == 302, f"login failed: {answer.status_code}"
        return {"sessionid": web.cookies["sessionid"], "csrftoken": web.cookies["csrftoken"]}


def open_task(browser: DevTools, url: str, cookies: dict[str, str], project_id: int, task_id: int,
              ready_js: str, timeout: float = 90.0):
    """Navigate to the task in the labeling editor and wait until ``ready_js`` returns a non-null value."""
    browser.open_page()
    for name, value in cookies.items():
        browser.call("Network.setCookie", name=name, value=value, url=url)
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{url}/projects/{project_id}/data?task={task_id}")
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline and value is None:
        time.sleep(0.5)
        value = browser.evaluate(ready_js)
    return value
