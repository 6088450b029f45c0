"""Headless Chromium shows the pushed task with the pipeline's box drawn over the right pixels.

Chromium is driven by ``tests/support/browser.py``; skips where it is absent (``apt-get install chromium``
to run it). It logs in through the web form, opens the task in the
labeling editor, takes a screenshot, finds the outline the editor drew (pixels changed from the image and
red like the label's colour, #ff2a00) and checks it lies within 4 screen px of where the box's pixels map.
"""

from __future__ import annotations

import base64
import io
import secrets
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.imageio import open_rgb
from ergo_data.labelstudio.push import push, select_samples
from tests.support.browser import DevTools, login_cookies, needs_chromium, open_task

pytestmark = [pytest.mark.integration, needs_chromium]


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
        rect = open_task(browser, ls_server.url, cookies, report.project_id, task.id, IMAGE_RECT_JS)
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
