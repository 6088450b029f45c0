"""A small OpenAI-compatible chat-completions server for a transformers checkpoint (``tiny``, an ``ergo train`` dir).

For real models use vLLM (``docs/eval.md``). This server exists so the served path can be tried and tested without
a GPU: it serves ``POST /v1/chat/completions`` and ``GET /v1/models`` on the stdlib ``ThreadingHTTPServer``, and
generates with the in-process backend (``ergo_train.rollout.chat.TransformersChat``), so a request renders and
decodes exactly as in-process inference does. What it reads, as vLLM does: ``messages`` (text and
``image_url`` data URLs in any role, assistant ``tool_calls`` with JSON-string arguments, tool messages),
``tools``, ``chat_template`` (the request's template, else the checkpoint's), ``max_tokens``, ``temperature``
(0 = greedy), ``top_p``, ``seed``, ``logprobs`` / ``top_logprobs`` (of the first generated token). Tool calls are
parsed with TRL's parser (vLLM: ``--tool-call-parser hermes``).

    python -m ergo_train.eval.chat_server --model tiny --port 8000     # or: ergo eval serve --model tiny

>>> from_wire_messages([{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
...     "function": {"name": "zoom", "arguments": '{"x1": 1}'}}]}])
[{'role': 'assistant', 'content': None, 'tool_calls': [{'type': 'function', 'function': {'name': 'zoom', 'arguments': {'x1': 1}}}]}]
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from ergo_train.rollout.chat import TransformersChat


class BadRequest(ValueError):
    pass


def _image(url: str) -> Image.Image:
    if not url.startswith("data:") or ";base64," not in url:
        raise BadRequest("only base64 data URLs are served (no network fetches)")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1], validate=True)))
        image.load()
    except Exception as e:  # noqa: BLE001 - any undecodable image is the client's fault
        raise BadRequest(f"image_url does not decode: {type(e).__name__}: {e}") from None
    return image.convert("RGB")


def from_wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages -> the processor's layout (PIL images, dict tool-call arguments, no ids)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"bad message {str(m)[:100]!r}")
        msg: dict[str, Any] = {"role": m["role"]}
        content = m.get("content")
        if isinstance(content, list):
            blocks = []
            for b in content:
                if b.get("type") == "image_url":
                    blocks.append({"type": "image", "image": _image((b.get("image_url") or {}).get("url", ""))})
                elif b.get("type") == "text":
                    blocks.append({"type": "text", "text": b.get("text", "")})
                else:
                    raise BadRequest(f"unsupported content part {b.get('type')!r}")
            content = blocks
        msg["content"] = content
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        fn["arguments"] = {}  # as vLLM does
                calls.append({"type": "function", "function": fn})
            msg["tool_calls"] = calls
        if m["role"] == "tool" and m.get("name"):
            msg["name"] = m["name"]
        out.append(msg)
    return out


class ChatCompletions:
    """The request -> reply logic, independent of HTTP (``handle(body) -> reply dict``)."""

    def __init__(self, chat: TransformersChat, model_name: str) -> None:
        self.chat, self.model_name = chat, model_name

    def handle(self, body: Mapping[str, Any]) -> dict[str, Any]:
        messages = from_wire_messages(body.get("messages"))
        tools = body.get("tools") or None
        temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
        gen: dict[str, Any] = {"do_sample": False} if temperature == 0 else {
            "do_sample": True, "temperature": temperature, "top_p": float(body.get("top_p") or 1.0)}
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.chat.max_new_tokens)
        seed = body.get("seed")
        turn = self.chat.complete(messages, tools, chat_template=body.get("chat_template"),
                                  seed=int(seed) if seed is not None else None, max_new_tokens=max_tokens,
                                  generate_kwargs=gen)
        # as vLLM's hermes parser: without a parsed call the content is the decoded text as is; with one, the text
        # around the call (TRL's parse, which is what in-process inference puts back into the next prompt)
        content = (turn.message.get("content") or "") if turn.tool_calls else turn.text
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if turn.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                 "function": {"name": c["function"].get("name"), "arguments": json.dumps(c["function"].get("arguments"))}}
                for c in turn.tool_calls]
        choice: dict[str, Any] = {"index": 0, "message": message,
                                  "finish_reason": "tool_calls" if turn.tool_calls else "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [self._first_token_logprobs(messages, body, int(body.get("top_logprobs")
                                                                                             or 1))]}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice],
                "usage": {"prompt_tokens": None, "completion_tokens": turn.generated_tokens}}

    def _first_token_logprobs(self, messages, body: Mapping[str, Any], top: int) -> dict[str, Any]:
        import torch

        from ergo_train.rollout.chat import using_chat_template

        chat = self.chat
        with chat._lock, using_chat_template(chat.processor, body.get("chat_template")), torch.no_grad():
            inputs = chat.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True, return_tensors="pt").to(chat.model.device)
            logits = chat.model(**inputs).logits[0, -1].float()
        suppressed = chat.generate_kwargs.get("suppress_tokens") or []
        if suppressed:
            logits[suppressed] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1)
        values, ids = torch.topk(logp, k=max(1, min(top, 20)))
        tok = chat.processor.tokenizer
        entries = [{"token": tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(values, ids)]
        return {**entries[0], "top_logprobs": entries}


def make_handler(app: ChatCompletions):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: the caller reports
            pass

        def _send(self, status: int, payload: Mapping[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": app.model_name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self._send(200, app.handle(body))
            except (BadRequest, ValueError, TypeError, KeyError) as e:
                self._send(HTTPStatus.BAD_REQUEST, {"error": {"message": f"{type(e).__name__}: {e}"}})
            except Exception as e:  # noqa: BLE001 - a server error is reported to the client, the server goes on
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": {"message": f"{type(e).__name__}: {e}"}})

    return Handler


def make_server(chat: TransformersChat, model_name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (0 = a free port; read ``server.server_address``); call ``serve_forever``."""
    server = ThreadingHTTPServer((host, port), make_handler(ChatCompletions(chat, model_name)))
    server.daemon_threads = True
    return server


def serve_in_thread(chat: TransformersChat, model_name: str, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, str]:
    """Start a server on a free port in a daemon thread; returns ``(server, api_base)``; ``server.shutdown()`` ends it."""
    server = make_server(chat, model_name, host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}/v1"


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from ergo_train.eval.evaluate import load_eval_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-pixels", type=int, default=16384 * 28 * 28, help="processor budget (images are sent "
                    "already resized, so this only needs to be at least the client's)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    model, processor = load_eval_model(args.model, args.max_pixels, args.device)
    server = make_server(TransformersChat(model, processor), args.model, args.host, args.port)
    h, p = server.server_address[:2]
    print(f"serving {args.model} on http://{h}:{p}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
