"""Opens a page in headless Chromium over the DevTools protocol and reports what a reader's browser saw.

Chromium's own `--screenshot` / `--dump-dom` flags cannot tell whether an image decoded or a request went out;
the DevTools protocol can (Network, Runtime and Log events), and `websockets` (sync client) is all it takes.
Debian's package: `apt-get install -y chromium` (the Makefile's `chromium` target).
"""

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHECK_IMAGES = "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"


@dataclass
class Seen:
    """What the browser saw while loading a page."""

    requests: list[str] = field(default_factory=list)  # every URL the page asked for, data: and file: included
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log entries of level error
    images: list[list] = field(default_factory=list)  # [complete, naturalWidth, naturalHeight, alt] per <img>
    text: str = ""  # document.body.innerText
    screenshot: bytes = b""  # PNG of the whole page at the window width

    @property
    def network(self) -> list[str]:
        """Requests that would leave the file: page (anything but data: URIs and the page itself)."""
        return [u for u in self.requests if not u.startswith(("data:", "file:"))]


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


class _Session:
    """One DevTools connection to a page target (flattened session), events kept as they arrive."""

    def __init__(self, socket, session_id: str):
        self.socket, self.session_id, self.events, self.ids = socket, session_id, [], itertools.count(1)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        ident = next(self.ids) + 1000
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params, "sessionId": self.session_id}))
        deadline = time.time() + timeout
        while time.time() < deadline:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.time())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(method)
            self.events.append(json.loads(self.socket.recv(timeout=max(0.1, deadline - time.time()))))


def open_page(page: Path, width: int = 1400, height: int = 1000, timeout: float = 90) -> Seen:
    """Loads `page` from file:// in headless Chromium and returns what it saw (no network: it is a local file)."""
    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="trash-chromium-")
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
               f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions", "about:blank"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port, path = port_file.read_text().split()[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout) as socket:
            return _load(socket, page, width, height, timeout)
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


def _attach(socket) -> _Session:
    socket.send(json.dumps({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}))
    target = _reply(socket, 1)["targetId"]
    attach = {"targetId": target, "flatten": True}
    socket.send(json.dumps({"id": 2, "method": "Target.attachToTarget", "params": attach}))
    return _Session(socket, _reply(socket, 2)["sessionId"])


def _reply(socket, ident: int) -> dict:
    while True:
        message = json.loads(socket.recv(timeout=30))
        if message.get("id") == ident:
            return message["result"]


def _load(socket, page: Path, width: int, height: int, timeout: float) -> Seen:
    s = _attach(socket)
    for domain in ("Page", "Runtime", "Log", "Network"):
        s.call(f"{domain}.enable")
    s.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    s.call("Page.navigate", url=Path(page).resolve().as_uri())
    s.wait_for("Page.loadEventFired", timeout)
    seen = Seen()
    seen.images = _value(s, CHECK_IMAGES)
    seen.text = _value(s, "document.body.innerText")
    full = s.call("Page.getLayoutMetrics")["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": width, "height": min(full["height"], 16000), "scale": 1}
    shot = s.call("Page.captureScreenshot", timeout=timeout, format="png", clip=clip, captureBeyondViewport=True)
    seen.screenshot = base64.b64decode(shot["data"])
    _read_events(s.events, seen)
    return seen


def _value(s: _Session, expression: str):
    return s.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"]["value"]


def _read_events(events: list[dict], seen: Seen) -> None:
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Network.requestWillBeSent":
            seen.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            seen.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            seen.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            seen.errors.append(params["entry"].get("text", ""))
