"""Label Studio, client side: the connection, its errors, the project and its labeling config.

Every call goes through label-studio-sdk; ``server_errors`` turns transport and API failures into one
``LabelStudioError`` sentence that names the URL and what to do. Push: ``push.py``; pull: ``pull.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ergo_data.core.errors import ErgoError
from ergo_data.labelstudio.credentials import local_token_hint

DEFAULT_URL = "http://127.0.0.1:8080"
IMAGE_STORE_TITLE = "ergo image store"
REGION_LABEL = "region"
MODEL_VERSION = "ergo-pipeline"
CONTROL_NAMES = ("region", "answer_correct", "region_answerable", "comment")

# Above the fold: the question, the answer and both required choices; below them the image with the
# region box beside the region's full-resolution crop. Paths and the sample itself stay out of task data
# (the data table shows every data key): the sample travels in the task's meta.
LABEL_CONFIG = """<View>
  <View style="display: flex; gap: 24px; align-items: flex-start">
    <View style="flex: 1">
      <Header value="Question" size="5"/>
      <Text name="question" value="$question"/>
      <Text name="options" value="$options_text"/>
      <Header value="Answer in the data set" size="5"/>
      <Text name="answer" value="$answer_text"/>
    </View>
    <View style="flex: 1">
      <Header value="Is the answer correct?" size="5"/>
      <Choices name="answer_correct" toName="question" choice="single" showInline="true" required="true"
               requiredMessage="Say whether the answer in the data set is correct">
        <Choice value="correct"/>
        <Choice value="wrong"/>
      </Choices>
      <Header value="Can the question be answered from the region alone?" size="5"/>
      <Choices name="region_answerable" toName="image" choice="single" showInline="true" required="true"
               requiredMessage="Say whether the region alone answers the question">
        <Choice value="yes"/>
        <Choice value="no"/>
      </Choices>
      <TextArea name="comment" toName="question" placeholder="comment (optional)" rows="2" maxSubmissions="1"
                editable="true"/>
    </View>
  </View>
  <View style="display: flex; gap: 24px; align-items: flex-start">
    <View style="flex: 3">
      <Header value="Image: move or redraw the red box so it covers what the question needs (no rotation)"
              size="6"/>
      <Text name="machine_boxes" value="$machine_boxes"/>
      <RectangleLabels name="region" toName="image">
        <Label value="region" background="#ff2a00"/>
      </RectangleLabels>
      <Image name="image" value="$image" zoom="true" zoomControl="true"/>
    </View>
    <View style="flex: 2">
      <Header value="The pipeline's region at full resolution (what the model sees after zooming)" size="6"/>
      <Text name="crop_note" value="$crop_note"/>
      <Image name="crop" value="$crop"/>
    </View>
  </View>
</View>"""
IMAGE_STORE_CONFIG = '<View><Image name="image" value="$image"/></View>'


class LabelStudioError(ErgoError, RuntimeError):
    """A Label Studio call that failed; the message names the server URL and what to do."""


@dataclass(frozen=True)
class Connection:
    """Where the server is and how to authenticate; ``timeout`` is per request, in seconds."""

    url: str
    api_key: str
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.url or not self.url.startswith(("http://", "https://")):
            raise LabelStudioError(
                f"Label Studio URL {self.url!r} must start with http:// or https:// "
                "(pass --url or set LABEL_STUDIO_URL)"
            )
        if not self.api_key:
            raise LabelStudioError(
                f"no API key for Label Studio at {self.url}: pass --api-key or set "
                "LABEL_STUDIO_API_KEY (the token under Account & Settings, or the "
                "LABEL_STUDIO_USER_TOKEN the server was started with)"
            )
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def client(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.api_key, timeout=self.timeout)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.api_key}"}


@contextmanager
def server_errors(conn: Connection) -> Iterator[None]:
    """Turn transport and API failures into one LabelStudioError that says what to do."""
    from label_studio_sdk.core.api_error import ApiError

    url = conn.url
    try:
        yield
    except httpx.TimeoutException as e:
        raise LabelStudioError(
            f"Label Studio at {url} did not answer within {conn.timeout:g} s ({type(e).__name__}): "
            f"the server is overloaded or stuck. Check it (`curl {url}/health`, its log) and run again, "
            "or raise --timeout. Nothing half-done is left that a re-run would duplicate."
        ) from None
    except httpx.TransportError as e:
        raise LabelStudioError(
            f"cannot reach Label Studio at {url} ({type(e).__name__}: {e}): is the server running? Start "
            "one with `ergo ls serve`, or pass --url / set LABEL_STUDIO_URL to where it runs."
        ) from None
    except ApiError as e:
        raise LabelStudioError(_api_error_message(conn, e.status_code, e.body)) from None


def _not_label_studio(conn: Connection) -> str | None:
    """What the URL is instead of Label Studio (by its ``/health``), or None if Label Studio answers there."""
    try:
        r = httpx.get(f"{conn.url}/health", timeout=min(conn.timeout, 10.0))
        if r.status_code == 200 and r.json().get("status") == "UP":
            return None
        seen = f"HTTP {r.status_code} ({r.headers.get('content-type', 'no content type')})"
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        seen = type(e).__name__
    return (
        f"{conn.url} is not a Label Studio server: its API answered with no JSON and GET {conn.url}/health "
        f"answered {seen}, where Label Studio answers {{\"status\": \"UP\"}}. Pass --url or set "
        "LABEL_STUDIO_URL to the server's base URL, e.g. http://127.0.0.1:8080 (no path after the port)."
    )


def _api_error_message(conn: Connection, status: int | None, body: Any) -> str:
    url = conn.url
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    if not isinstance(body, Mapping | list):  # an HTML page or nothing: maybe no Label Studio at all
        what = _not_label_studio(conn)
        if what:
            return what
        kind = "an HTML page" if "<html" in str(body).lower() else "no JSON"
        path = urlsplit(url).path
        return f"Label Studio at {url} answered HTTP {status} with {kind} instead of its API's JSON" + (
            f": the URL has a path ({path}); pass the server's base URL, e.g. "
            f"{url[: len(url) - len(path)]} (no path after the port)" if path.strip("/") else ""
        )
    if status == 401:
        hint = local_token_hint(url, conn.api_key)
        return (
            f"Label Studio at {url} rejected the API key (401: {detail}). "
            + (f"{hint} " if hint else "")
            + "Otherwise pass --api-key or set LABEL_STUDIO_API_KEY to your token (Account & Settings in "
            "the web UI)."
        )
    if status == 403:
        return (
            f"Label Studio at {url} refused the request (403: {detail}): this account lacks the permission."
        )
    return f"Label Studio at {url} answered HTTP {status}: {str(detail)[:2000]}"


def check_response(response: httpx.Response) -> Any:
    """Raise the SDK's ApiError for a non-2xx answer to a raw request, so ``server_errors`` reports it."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 300:
        raise ApiError(status_code=response.status_code, body=body, headers=dict(response.headers))
    return body


# ---- the project ---------------------------------------------------------------------------------
def check_title(title: str) -> str:
    if not 3 <= len(title) <= 50:
        raise LabelStudioError(f"project name {title!r} must be 3 to 50 characters (a Label Studio limit)")
    return title


def find_project(ls, title: str, conn: Connection):
    """The project titled exactly ``title``, or None; an error if several share the title."""
    found = [p for p in ls.projects.list(title=title) if p.title == title]
    if len(found) > 1:
        raise LabelStudioError(
            f"{len(found)} projects at {conn.url} are titled {title!r} "
            f"(ids {sorted(p.id for p in found)}): rename all but one"
        )
    return found[0] if found else None


def find_review_project(ls, title: str, conn: Connection):
    """The review project titled ``title`` (None if there is none); an error for the image store or a
    project whose labeling config is not ergo's."""
    if title == IMAGE_STORE_TITLE:
        raise LabelStudioError(
            f"{IMAGE_STORE_TITLE!r} at {conn.url} is where `ergo ls push` keeps the images, not a review "
            "project: pass the --project you pushed to"
        )
    project = find_project(ls, check_title(title), conn)
    if project is None:
        return None
    config = project.label_config or ""
    missing = [n for n in CONTROL_NAMES if f'name="{n}"' not in config]
    if missing:
        raise LabelStudioError(
            f"project {title!r} at {conn.url} exists but its labeling config is not ergo's "
            f"(no control named {', '.join(missing)}): choose another --project name"
        )
    return project


def ensure_project(ls, title: str, conn: Connection):
    """Reuse the review project titled ``title``, else create it with ergo's labeling config."""
    project = find_review_project(ls, title, conn)
    if project is None:
        return ls.projects.create(
            title=title,
            label_config=LABEL_CONFIG,
            description="ERGO review: region box, answer, answerability (ergo ls push)",
        )
    return project


def existing_sample_ids(ls, project_id: int) -> dict[str, int]:
    """``sample_id -> task id`` of the project's tasks, listed once (tasks without one are skipped)."""
    out: dict[str, int] = {}
    for task in ls.tasks.list(project=project_id, fields="task_only", page_size=500):
        sid = (task.data or {}).get("sample_id")
        if isinstance(sid, str):
            out.setdefault(sid, task.id)
    return out
