"""How the app is served (``app.py`` calls :func:`launch`): the queue and launch settings that bound what clients can
make the server hold, the sweep of the upload folder, and :class:`RequestGuard`, an ASGI middleware in front of
Gradio's routes.

What this adds to Gradio's own checks (docs/deployment.md, "Limits and safe deployment"):

* The queue is the only way in: ``api_open=False``, so ``/run/<name>`` cannot start queued events beside the
  queue's concurrency limit.
* At most :data:`MAX_SESSIONS` sessions keep their state (Gradio's ``state_session_capacity``, 10,000 by default):
  the oldest beyond it are dropped, and with them their images.
* Uploads and results older than :data:`~bavit.app.uploads.CACHE_LIFETIME` are deleted every
  :data:`SWEEP_PERIOD` seconds and at start-up (files left by a server that was killed included).
* :class:`RequestGuard`: a request body to ``/upload`` or ``/component_server`` (the image editor's blobs, which
  Gradio reads into memory) of at most :data:`MAX_REQUEST_BYTES` and :data:`MAX_REQUEST_PARTS` parts; ``/file=``
  with a URL refused (Gradio answers it with a redirect to that URL); a Gradio route that fails before answering
  answers 400 with one line of JSON (Gradio runs its app with ``debug=True``, which sends the traceback); and the
  ``error`` event of a ``/call/<name>/<event>`` stream carries the app's message (Gradio sends ``data: null``).
* ``show_error=True``: what Gradio itself refuses before an event runs (a string where an image belongs) says why
  (the app's own events turn every failure into a one-line ``gr.Error`` already).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.context import LocalContext
from gradio.route_utils import FnIndexInferError
from starlette.middleware import Middleware

from . import uploads

log = logging.getLogger(__name__)

MAX_SESSIONS = 32  # sessions whose state (their image, about 5 MiB each) is kept; the oldest go first
SWEEP_PERIOD = 60  # s between sweeps of the upload folder
MAX_REQUEST_BYTES = 26 * 2**20  # one upload of MAX_UPLOAD (25 MB) and its multipart framing
MAX_REQUEST_PARTS = 4  # files or fields in one upload request (the page sends one file a request)
GUARDED_ROUTES = ("/upload", "/component_server")  # request bodies Gradio stores or reads into memory
RECENT_ERRORS = 2000  # error texts kept for /call streams (Gradio keeps as many results)
EDITOR_BLOBS = 4  # image-editor blob sets kept in memory (Gradio keeps every one a client sends)


class RecentErrors:
    """The error texts of the latest :data:`RECENT_ERRORS` failed events, by Gradio event id (thread-safe)."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        self.size = size
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, text: str) -> None:
        """Keep ``text`` for the event being processed now (no-op outside a Gradio event)."""
        event_id = LocalContext.event_id.get(None)
        if not event_id:
            return
        with self._lock:
            self._texts[event_id] = text
            while len(self._texts) > self.size:
                self._texts.popitem(last=False)

    def get(self, event_id: str) -> str | None:
        with self._lock:
            return self._texts.get(event_id)


ERRORS = RecentErrors()
# A /call error the app did not raise: Gradio refused the request's data before the event ran.
UNEXPLAINED = ("the request's data does not fit this endpoint's inputs (see /gradio_api/info; an image is a file "
               "payload {\"path\": ...} of an upload)")


class BoundedBlobs(OrderedDict):
    """A ``gr.ImageEditor``'s ``blob_storage`` that keeps only the :data:`EDITOR_BLOBS` newest entries.

    Any client may post blobs to the editor's ``accept_blobs`` server function, under any id; Gradio keeps them in
    memory until an event with that id preprocesses the editor, which the page's paint event never does (it reads
    uploaded files, ``preprocess=False``)."""

    def __init__(self, size: int = EDITOR_BLOBS) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _json_response(status: int, error: str) -> tuple[dict, dict]:
    body = json.dumps({"error": error}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


class RequestTooLarge(Exception):
    """A guarded request body over :data:`MAX_REQUEST_BYTES` or :data:`MAX_REQUEST_PARTS`."""


_CALL_STREAM = re.compile(r"/call/[^/]+/(?P<event>[^/]+)/?$")
_EVENT_ROUTE = re.compile(r"/(call|run|api|queue/join)(/|$)")  # routes that name an event (api_name or fn_index)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")  # a scheme ("http:", "file:") or a network path ("//host")


class RequestGuard:
    """ASGI middleware in front of Gradio's routes (see the module docstring for what it refuses)."""

    def __init__(self, app: Any, max_bytes: int = MAX_REQUEST_BYTES, max_parts: int = MAX_REQUEST_PARTS,
                 errors: RecentErrors = ERRORS) -> None:
        self.app, self.max_bytes, self.max_parts, self.errors = app, max_bytes, max_parts, errors

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if "/file=" in path and _URL.match(path.split("/file=", 1)[1]):
            return await self._answer(send, 403, "this app serves only its own files")
        guarded = scope.get("method") == "POST" and path.rstrip("/").endswith(GUARDED_ROUTES)
        if guarded:
            length = dict(scope.get("headers", [])).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                await self._drain(receive)
                return await self._answer(send, 413, f"a request may carry at most {self.max_bytes // 2**20} MiB")
            original_receive, receive = receive, self._counting(receive)
        stream = _CALL_STREAM.search(path) if scope.get("method") == "GET" else None
        if stream:
            send = self._with_error_text(send, stream.group("event"))
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except RequestTooLarge as exc:
            if started:
                raise
            if not receive.ended:
                await self._drain(original_receive)
            await self._answer(send, 413, str(exc))
        except Exception as exc:  # a route that failed before answering: one line, no traceback
            if started:
                raise
            log.warning("%s %s failed: %s", scope.get("method"), path[:200], exc.__class__.__name__)
            if isinstance(exc, (FnIndexInferError, KeyError)) and _EVENT_ROUTE.search(path):  # name, fn_index
                await self._answer(send, 404, "no such event: name one listed by /gradio_api/info (api_name)")
            else:
                await self._answer(send, 400, f"this request cannot be processed ({exc.__class__.__name__})")

    @staticmethod
    async def _drain(receive: Any) -> None:
        """Read the rest of a refused body, keeping none of it: a client that sends its whole body before reading
        the answer (Python's ``http.client``) then reads the 413 instead of a reset connection."""
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    @staticmethod
    async def _answer(send: Any, status: int, error: str) -> None:
        start, body = _json_response(status, error)
        await send(start)
        await send(body)

    def _counting(self, receive: Any) -> Any:
        """``receive`` that raises :class:`RequestTooLarge` once the body passes the byte or part limit; its
        ``ended`` attribute says whether the body had been read to its end then."""
        seen, parts, tail = 0, 0, b""
        marker = b"content-disposition:"

        async def counted() -> dict:
            nonlocal seen, parts, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                window = tail + chunk.lower()
                parts += window.count(marker)
                tail = window[-(len(marker) - 1):]
                counted.ended = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise RequestTooLarge(f"a request may carry at most {self.max_bytes // 2**20} MiB")
                if parts > self.max_parts:
                    raise RequestTooLarge(f"a request may carry at most {self.max_parts} files")
            return message

        counted.ended = False
        return counted

    def _with_error_text(self, send: Any, event_id: str) -> Any:
        """``send`` that writes the app's error text into the stream's ``event: error`` in place of ``null``."""

        async def rewritten(message: dict) -> None:
            if message["type"] == "http.response.body" and b"event: error\ndata: null" in message.get("body", b""):
                text = self.errors.get(event_id) or UNEXPLAINED
                body = message["body"].replace(b"event: error\ndata: null",
                                               b"event: error\ndata: " + json.dumps(text).encode())
                message = {**message, "body": body}
            await send(message)

        return rewritten


def sweep_uploads(folder: str | Path, lifetime: float, keep: set[str] = frozenset(), now: float | None = None) -> int:
    """Delete the files in ``folder`` (recursively) last changed more than ``lifetime`` seconds before ``now``
    (default: the current time), except those in ``keep``; then the folders left empty. Returns how many files
    were deleted."""
    now = time.time() if now is None else now
    root = Path(folder)
    if not root.is_dir():
        return 0
    deleted = 0
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_symlink() or path.is_file():
                if str(path) not in keep and now - path.lstat().st_mtime > lifetime:
                    path.unlink()
                    deleted += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return deleted


def _kept_files(demo: gr.Blocks) -> set[str]:
    """Files Gradio keeps in its cache for the page (the examples)."""
    keep: set[str] = set()
    for block in demo.blocks.values():
        keep.update(str(p) for p in getattr(block, "keep_in_cache", ()))
    return keep


def _sweeping(demo: gr.Blocks, folder: str, lifetime: float, period: float):
    """A Starlette lifespan: sweep the upload folder at start-up, before the server takes requests (what a killed
    server left is gone before anyone can ask for it), then every ``period`` seconds."""

    async def sweep() -> None:
        deleted = await asyncio.to_thread(sweep_uploads, folder, lifetime, _kept_files(demo))
        if deleted:
            log.info("deleted %d uploads and results older than %.0f s", deleted, lifetime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async def sweep_forever() -> None:
            while True:
                await asyncio.sleep(period)
                await sweep()

        await sweep()
        task = asyncio.create_task(sweep_forever())
        try:
            yield
        finally:
            task.cancel()

    return lifespan


def launch(demo: gr.Blocks, *, concurrency: int, host: str | None = None, port: int | None = None,
           data: str | Path | None = None, **kwargs: Any) -> None:
    """Queue and launch ``demo`` with the limits above (``kwargs`` go to ``Blocks.launch``)."""
    folder = gr.utils.get_upload_folder()
    app_kwargs = {"middleware": [Middleware(RequestGuard)],
                  "lifespan": _sweeping(demo, folder, uploads.CACHE_LIFETIME - SWEEP_PERIOD, SWEEP_PERIOD)}
    demo.queue(default_concurrency_limit=concurrency, api_open=False).launch(
        server_name=host, server_port=port, allowed_paths=uploads.allowed_paths(data),
        max_file_size=uploads.MAX_UPLOAD,  # larger uploads are refused as they arrive
        state_session_capacity=MAX_SESSIONS, app_kwargs=app_kwargs,
        show_error=True,  # errors raised by Gradio before an event runs (a string for an image) say why, not null
        **kwargs)


__all__ = ["BoundedBlobs", "EDITOR_BLOBS", "ERRORS", "GUARDED_ROUTES", "MAX_REQUEST_BYTES", "MAX_REQUEST_PARTS", "MAX_SESSIONS", "RecentErrors",
           "RequestGuard", "SWEEP_PERIOD", "launch", "sweep_uploads"]
