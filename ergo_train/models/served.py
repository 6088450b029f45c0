"""A served model as a chat backend: any OpenAI-compatible ``/chat/completions`` server (vLLM, SGLang, TGI, ...).

``ServedChat.complete(messages, tools, chat_template=..., seed=...)`` has the signature of the in-process backend
(``ergo_train.rollout.chat.TransformersChat``): it takes messages in the processor's layout, sends them in the
OpenAI wire format and returns the assistant turn. Conversions happen only here, at the boundary:

- images (PIL) -> ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``, lossless PNG, so
  the server decodes exactly the pixels the caller built (the caller resizes; the server's own budget must be at
  least as large, which vLLM's Qwen2.5-VL default of 16384*28*28 is);
- tools (Python callables) -> JSON schemas (``transformers.utils.get_json_schema``, what ``apply_chat_template``
  renders in process); tool-call arguments -> JSON strings out, dicts back in; tool messages get the
  ``tool_call_id`` of the call they answer;
- ``chat_template`` (a template string) is sent in the request body (vLLM: ``--trust-request-chat-template``)
  unless ``send_chat_template=False`` (then the server's own template renders).

Failures are bounded and named: at most ``max_concurrency`` requests in flight, ``timeout_s`` per request,
429/5xx/connection errors retried ``retries`` times with exponential backoff (``Retry-After`` honoured), then a
``ServedError`` whose ``reason`` is ``timeout``, ``http_<status>``, ``connect`` or ``bad_response``.

>>> to_openai_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
[{'role': 'user', 'content': [{'type': 'text', 'text': 'Hi'}]}]
>>> ServedChat("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=1).complete(
...     [{"role": "user", "content": "Hi"}])
Traceback (most recent call last):
...
ergo_train.models.served.ServedError: connect: POST http://127.0.0.1:9/v1/chat/completions failed after 1 try: ...
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from PIL import Image

from ergo_data.core.vision import PATCH

API_KEY_ENV = "OPENAI_API_KEY"  # where ``--api-key`` is read from when not given (never written to reports)
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ServedError(RuntimeError):
    """A request that failed for good; ``reason`` is a short code (``timeout``, ``http_503``, ``connect``...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ServedTurn(NamedTuple):
    """The assistant turn, in the fields of ``ergo_train.rollout.chat.ChatTurn`` (which this layer cannot import)."""

    message: dict[str, Any]
    text: str
    generated_tokens: int
    vision_tokens: int | None = None


# ---- the wire format --------------------------------------------------------------------------------
def image_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL of ``image`` (the one ``encode_ahead`` made, when it did)."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.get(id(image))
    if ahead is not None and ahead[0] is image:
        return ahead[1].result()
    return _png_data_url(image)


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_AHEAD: dict[int, tuple[Image.Image, Any]] = {}  # id -> (image, Future of its data URL), the latest _AHEAD_MAX
_AHEAD_MAX = 256
_AHEAD_LOCK = threading.Lock()


def encode_ahead(images: Sequence[Image.Image], pool) -> None:
    """Start encoding ``images``' data URLs on ``pool`` (an executor): a request that sends one of them later
    takes the encoded URL (or waits for it) instead of encoding in the caller's thread. The same PNG bytes."""
    with _AHEAD_LOCK:
        for image in images:
            if id(image) not in _AHEAD:
                _AHEAD[id(image)] = (image, pool.submit(_png_data_url, image))
        while len(_AHEAD) > _AHEAD_MAX:
            del _AHEAD[next(iter(_AHEAD))]


def _block(block: Any) -> dict[str, Any]:
    if isinstance(block, str):
        return {"type": "text", "text": block}
    if block.get("type") == "image":
        image = block.get("image")
        if not isinstance(image, Image.Image):
            raise TypeError(f"image blocks must hold a PIL image to send, got {type(image).__name__}")
        return {"type": "image_url", "image_url": {"url": image_data_url(image)}}
    return dict(block)


def to_openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Processor-layout messages -> OpenAI chat messages (see the module docstring)."""
    out: list[dict[str, Any]] = []
    pending_ids: list[str] = []  # ids of the last assistant's tool calls, answered in order by tool messages
    for n, m in enumerate(messages):
        msg: dict[str, Any] = {"role": m["role"]}
        content = m.get("content")
        msg["content"] = content if content is None or isinstance(content, str) else [_block(b) for b in content]
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = []
            for i, call in enumerate(m["tool_calls"]):
                fn = call.get("function", call)
                args = fn.get("arguments")
                calls.append({"id": call.get("id") or f"call_{n}_{i}", "type": "function",
                              "function": {"name": fn.get("name"),
                                           "arguments": args if isinstance(args, str) else json.dumps(args)}})
            msg["tool_calls"] = calls
            pending_ids = [c["id"] for c in calls]
        if m["role"] == "tool":
            msg["tool_call_id"] = m.get("tool_call_id") or (pending_ids.pop(0) if pending_ids else f"call_{n}")
            if m.get("name"):
                msg["name"] = m["name"]
        out.append(msg)
    return out


def tool_schemas(tools: Sequence[Callable | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool entries for ``tools`` (callables through transformers' ``get_json_schema``)."""
    from transformers.utils import get_json_schema

    return [dict(t) if isinstance(t, Mapping) else get_json_schema(t) for t in tools]


def from_openai_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI reply message -> the rewards' layout: tool-call arguments as dicts (a JSON string that is not an
    object stays a string, so the zoom parser reports it)."""
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    calls = []
    for call in message.get("tool_calls") or []:
        fn = dict(call.get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                fn["arguments"] = json.loads(args)
            except ValueError:
                pass
        calls.append({"id": call.get("id"), "type": "function", "function": fn})
    if calls:
        out["tool_calls"] = calls
    return out


def turn_text(message: Mapping[str, Any]) -> str:
    """The turn as text: the content, then each tool call in Hermes syntax (what the model wrote, re-serialized)."""
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        text += "<tool_call>\n" + json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")}) + \
                "\n</tool_call>"
    return text


def request_vision_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Vision tokens of the images in a request as sent (Qwen: one per 28x28 patch of the image's own size)."""
    total = 0
    for m in messages:
        for b in m.get("content") or []:
            if isinstance(b, Mapping) and isinstance(b.get("image"), Image.Image):
                w, h = b["image"].size
                total += math.ceil(w / PATCH) * math.ceil(h / PATCH)
    return total


# ---- the client --------------------------------------------------------------------------------------
class ServedChat:
    """Chat completions on ``api_base`` (e.g. ``http://127.0.0.1:8000/v1``) with served model ``model``.

    ``temperature=0`` is greedy. ``api_key`` defaults to ``$OPENAI_API_KEY`` (sent as a Bearer token if set).
    Thread-safe: one ``httpx.Client`` and a semaphore bound the requests in flight.
    """

    name = "served"

    def __init__(self, api_base: str, model: str, *, api_key: str | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, timeout_s: float = 120.0, retries: int = 4,
                 backoff_s: float = 1.0, max_concurrency: int = 8, send_chat_template: bool = True,
                 extra_body: Mapping[str, Any] | None = None) -> None:
        import httpx

        self.api_base = api_base.rstrip("/")
        self.model = model
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.max_new_tokens, self.temperature, self.top_p = int(max_new_tokens), float(temperature), float(top_p)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), max(0, int(retries)), float(backoff_s)
        self.max_concurrency = max(1, int(max_concurrency))
        self.send_chat_template = bool(send_chat_template)
        self.extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout_s),
                                    limits=httpx.Limits(max_connections=self.max_concurrency))
        self.requests = 0  # requests sent, retries included
        self.retried = 0

    def __repr__(self) -> str:
        return f"ServedChat({self.api_base!r}, {self.model!r})"

    def close(self) -> None:
        self._client.close()

    def body(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Callable] | None = None, *,
             chat_template: str | None = None, seed: int | None = None, **overrides: Any) -> dict[str, Any]:
        """The request body of one completion (exposed for inspection and tests)."""
        body: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(messages),
                                "max_tokens": self.max_new_tokens, "temperature": self.temperature,
                                "top_p": self.top_p, **self.extra_body}
        if tools:
            body["tools"] = tool_schemas(tools)
        if chat_template is not None and self.send_chat_template:
            body["chat_template"] = chat_template
        if seed is not None:
            body["seed"] = int(seed)
        body.update(overrides)
        return body

    def complete(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Callable] | None = None, *,
                 chat_template: str | None = None, seed: int | None = None) -> ServedTurn:
        reply = self.post(self.body(messages, tools, chat_template=chat_template, seed=seed))
        choice = _first_choice(reply)
        message = from_openai_message(choice.get("message") or {})
        usage = reply.get("usage") or {}
        generated = int(usage.get("completion_tokens") or 0)
        return ServedTurn(message, turn_text(message), generated, request_vision_tokens(messages))

    def next_token_logprobs(self, messages: Sequence[Mapping[str, Any]], *, chat_template: str | None = None,
                            top: int = 20) -> dict[str, float]:
        """``{token text: logprob}`` of the ``top`` most likely first tokens of the reply (one generated token)."""
        body = self.body(messages, chat_template=chat_template, max_tokens=1, temperature=0.0, logprobs=True,
                         top_logprobs=int(top))
        choice = _first_choice(self.post(body))
        content = ((choice.get("logprobs") or {}).get("content") or [])
        if not content:
            raise ServedError("bad_response", "the server returned no logprobs (does it support 'logprobs'?)")
        return {e["token"]: float(e["logprob"]) for e in content[0].get("top_logprobs") or []}

    def post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/chat/completions`` with the retry policy; the decoded JSON reply."""
        import httpx

        url = f"{self.api_base}/chat/completions"
        last = ("connect", "no attempt")
        tries = self.retries + 1
        with self._slots:
            for attempt in range(tries):
                if attempt:
                    self.retried += 1
                self.requests += 1
                wait = self.backoff_s * 2 ** attempt
                try:
                    resp = self._client.post(url, json=body)
                except httpx.TimeoutException as e:
                    last = ("timeout", f"no reply within {self.timeout_s:g} s ({type(e).__name__})")
                except httpx.TransportError as e:
                    last = ("connect", f"{type(e).__name__}: {e}")
                else:
                    if resp.status_code == 200:
                        try:
                            return resp.json()
                        except ValueError:
                            raise ServedError("bad_response", f"POST {url}: reply is not JSON: {resp.text[:200]!r}")
                    last = (f"http_{resp.status_code}", _error_text(resp))
                    if resp.status_code not in RETRY_STATUSES:
                        break
                    wait = max(wait, _retry_after(resp))
                if attempt + 1 < tries:
                    time.sleep(wait)
        n = attempt + 1
        raise ServedError(last[0], f"POST {url} failed after {n} tr{'y' if n == 1 else 'ies'}: {last[1]}")


def _first_choice(reply: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = reply.get("choices") if isinstance(reply, Mapping) else None
    if not choices or not isinstance(choices[0], Mapping):
        raise ServedError("bad_response", f"reply has no choices: {json.dumps(reply)[:200]}")
    return choices[0]


def _error_text(resp) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return resp.text[:300]


def _retry_after(resp) -> float:
    try:
        return min(60.0, float(resp.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
