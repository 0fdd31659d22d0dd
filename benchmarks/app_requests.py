"""Requests to a running app as a browser, a client or an attacker makes them, for the benches
(:mod:`.upload_memory`): raw uploads (``/gradio_api/upload``), queue joins (``/gradio_api/queue/join`` and its event
stream), POSTs straight to ``/gradio_api/run/predict``, and ``gradio_client`` calls; :class:`Server` finds the
events by API name or by the ``elem_id`` and trigger of the component that starts them (``/config``).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bavit.app.session import MODE_THRESHOLD

ANALYZE = (0.5, 3, 0, 0)  # analyze's threshold, cca_steps, keep_ratio, sparsity
CONTROLS = [MODE_THRESHOLD, 0.5, 35, 3, False, False]  # mode, threshold, target %, CCA, detect, show dense
TIMEOUT = 900.0  # s, per request


class Refused(Exception):
    """A call the server answered with an error (its text)."""


def new_session() -> str:
    """A new ``session_hash``, as a page makes one."""
    return uuid.uuid4().hex[:11]


def request_json(url: str, body: dict | bytes | None = None, content_type: str = "application/json") -> Any:
    """GET ``url`` (POST ``body``, a dict as JSON); the JSON answer. An HTTP error raises :class:`Refused`."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"content-type": content_type} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            text = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            pass
        raise Refused(f"HTTP {error.code}: {text}") from None


def upload(url: str, path: Path) -> dict:
    """``path`` POSTed to ``/gradio_api/upload`` as the page does; its FileData payload."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    server_path = request_json(url + "gradio_api/upload", body, f"multipart/form-data; boundary={boundary}")[0]
    return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def queue_call(url: str, fn_index: int, data: list, session: str | None = None) -> Any:
    """Join the queue as the page does (a new session unless given) and wait for the result: its output."""
    session = session or new_session()
    request_json(url + "gradio_api/queue/join", {"data": data, "fn_index": fn_index, "session_hash": session,
                                             "event_data": None, "trigger_id": None})
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=TIMEOUT) as stream:
        for line in stream:
            message = json.loads(line[5:]) if line.startswith(b"data:") else {}
            if message.get("msg") == "process_completed":
                if not message.get("success"):
                    raise Refused((message.get("output") or {}).get("error") or "error (no text)")
                return message.get("output")
    raise Refused("the queue closed without a result")


def run_predict(url: str, fn_index: int, data: list) -> Any:
    """POST straight to ``/gradio_api/run/predict`` (no queue), as a new session."""
    return request_json(url + "gradio_api/run/predict", {"data": data, "fn_index": fn_index, "session_hash": new_session()})


@dataclass
class Server:
    """A running app: its URL, process id and the ``fn_index`` of the events called by raw requests."""

    url: str
    pid: int
    config: dict

    @classmethod
    def connect(cls, url: str, pid: int) -> Server:
        """The app at ``url`` (process ``pid``), its page configuration read once."""
        return cls(url, pid, request_json(url + "config"))

    def fn(self, api_name: str | None = None, elem_id: str | None = None, trigger: str = "change") -> int:
        """The event with this API name, or the ``trigger`` event of the component ``elem_id``."""
        ids = {c["id"]: c.get("props", {}).get("elem_id") for c in self.config["components"]}
        for dep in self.config["dependencies"]:
            if (api_name and dep.get("api_name") == api_name) or (elem_id and any(
                    ids.get(target) == elem_id and event == trigger for target, event in dep["targets"])):
                return dep["id"]
        raise LookupError(api_name or f"{elem_id}.{trigger}")

    def client(self):
        from gradio_client import Client

        return Client(self.url, download_files=False, verbose=False)

    def api(self, api_name: str, path: Path, args: Sequence = ANALYZE, client=None) -> Callable[[], Any]:
        """A ``gradio_client`` call of ``api_name`` with ``path`` as its image (uploaded in the call)."""
        from gradio_client import handle_file

        client = client or self.client()
        return lambda: client.predict(handle_file(str(path)), *args, api_name=api_name)

    def page_image(self, payload: dict, session: str | None = None) -> Any:
        """The page's upload event with this FileData payload."""
        return queue_call(self.url, self.fn(elem_id="input-image"), [payload, None, *CONTROLS], session)
