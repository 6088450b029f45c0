"""Headless Chromium shows the pushed task with the pipeline's box drawn over the right pixels.

Drives Debian's ``/usr/bin/chromium`` over the DevTools protocol through ``--remote-debugging-pipe``
(file descriptors 3 and 4; no websocket library, no browser download). Skips where Chromium is absent
(``apt-get install chromium`` to run it). It logs in through the web form, opens the task in the
labeling editor, takes a screenshot, finds the outline the editor drew (pixels changed from the image and
red like the label's colour, #ff2a00) and checks it lies within 4 screen px of where the box's pixels map.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import select
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.imageio import open_rgb
from ergo_data.labelstudio.push import push, select_samples

CHROMIUM = Path("/usr/bin/chromium")
REPLY_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="headless browser check skipped: /usr/bin/chromium is "
        "absent (apt-get install chromium to run it)",
    ),
]


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


# The editor's image (inside .lsf-image; the data table's thumbnail is another <img>), on screen.
IMAGE_RECT_JS = """(() => {
  const img = document.querySelector('.lsf-image img');
  if (!img || !img.complete || !img.naturalWidth) return null;
  img.scrollIntoView({block: 'center'});
  const r = img.getBoundingClientRect();
  return [r.x, r.y, r.width, r.height, img.naturalWidth, img.naturalHeight];
})()"""


def box_on_screen(shot: np.ndarray, rect: list[float], source: Image.Image) -> Box:
    """Where the editor drew over the image: compare the screenshot with the image resized to its screen
    size; the rows and columns with many changed, box-coloured pixels are the box's outline."""
    x, y, w, h = (round(v) for v in rect[:4])
    seen = shot[y : y + h, x : x + w, :3].astype(int)
    plain = np.asarray(source.resize((seen.shape[1], seen.shape[0]), Image.BILINEAR)).astype(int)
    # changed from the image, and red like the label's colour (the outline over a reddish desert changes
    # the pixel less than over a blue car, so the test needs both)
    changed = (np.abs(seen - plain).max(axis=2) > 30) & (seen[..., 0] - seen[..., 1:].max(axis=2) > 60)
    cols, rows = np.where(changed.sum(axis=0) >= 8)[0], np.where(changed.sum(axis=1) >= 8)[0]
    assert cols.size and rows.size, "nothing drawn over the image"
    return Box(x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1)


def test_task_page_draws_the_predicted_box_over_its_pixels(ls_server, demo_set, tmp_path):
    conn = ls_server.connection()
    title = f"browser {secrets.token_hex(3)}"
    # the sample whose box covers most of its image: the largest outline on screen
    row = max(
        select_samples(demo_set),
        key=lambda r: Box.from_record(r["boxes"][0]).area / (r["width"] * r["height"]),
    )
    report = push(demo_set, title, conn, where=f"id = '{row['id']}'")
    task = next(iter(conn.client().tasks.list(project=report.project_id, fields="task_only")))
    cookies = login_cookies(ls_server.url, ls_server.username, ls_server.password)

    browser = DevTools(tmp_path / "profile")
    try:
        browser.open_page()
        for name, value in cookies.items():
            browser.call("Network.setCookie", name=name, value=value, url=ls_server.url)
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{ls_server.url}/projects/{report.project_id}/data?task={task.id}")
        deadline, rect = time.monotonic() + 90, None
        while time.monotonic() < deadline and rect is None:
            time.sleep(0.5)
            rect = browser.evaluate(IMAGE_RECT_JS)
        assert rect is not None, "the labeling editor did not show the task's image"
        time.sleep(2)  # the editor draws regions on a canvas after the image loads
        rect = browser.evaluate(IMAGE_RECT_JS)  # again: scrolling into view may have moved it
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
    finally:
        browser.close()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB"))
    Image.fromarray(image).save(tmp_path / "task.png")  # kept for a human look when the test fails

    x, y, w, h, natural_w, natural_h = rect
    assert (natural_w, natural_h) == (row["width"], row["height"])
    machine = Box.from_record(row["boxes"][0])
    sx, sy = w / row["width"], h / row["height"]
    expected = Box(x + machine.x1 * sx, y + machine.y1 * sy, x + machine.x2 * sx, y + machine.y2 * sy)
    drawn = box_on_screen(image, rect, open_rgb(Path(row["image"]["path"]).read_bytes()))
    diffs = [abs(a - b) for a, b in zip(drawn.as_tuple(), expected.as_tuple())]
    assert max(diffs) <= 4, f"box drawn at {drawn}, expected {expected} (screenshot {tmp_path / 'task.png'})"
