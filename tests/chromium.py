"""Headless Chromium (Debian's `chromium` package, /usr/bin/chromium) driven over the Chrome DevTools
Protocol on a pipe (--remote-debugging-pipe: the browser reads commands on fd 3 and answers on fd 4, one
JSON message per NUL-terminated chunk), with the network off. No driver, no websocket library, no
downloaded browser. Used by tests/test_report_browser.py, benchmarks/report_size.py and the screenshot
in docs/results.md.

    with Chromium() as browser:
        seconds = browser.open("file:///tmp/report.html", ready="document.body.dataset.ready === 'true'")
        browser.evaluate("document.title")
        Path("shot.png").write_bytes(browser.screenshot())
        assert not browser.problems()   # failed requests, console errors, uncaught exceptions
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BINARY = "/usr/bin/chromium"
FLAGS = ["--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
         "--disable-dev-shm-usage",
         # no network at all: every host name fails to resolve, and any request goes to a dead proxy
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def available() -> bool:
    return Path(BINARY).is_file()


class Chromium:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.width, self.height, self.timeout = width, height, timeout
        self.events: list[dict] = []
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser, self._commands = os.pipe()   # we write commands; the browser reads them on fd 3
        self._answers, from_browser = os.pipe()  # the browser writes answers on fd 4; we read them

        def pipes_on_3_and_4():  # in the child, before exec: fds 3 and 4 are the protocol's pipes
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen([BINARY, *FLAGS, f"--user-data-dir={self.profile}",
                                         f"--window-size={self.width},{self.height}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=pipes_on_3_and_4, close_fds=False)
        os.close(to_browser)
        os.close(from_browser)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=True)
        self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session=True)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in self.events."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> float:
        """Poll until the expression is true; the seconds it took."""
        started = time.monotonic()
        while not self.evaluate(expression):
            if time.monotonic() - started > (timeout or self.timeout):
                raise TimeoutError(f"never true: {expression}")
            time.sleep(0.02)
        return time.monotonic() - started

    def open(self, url: str, ready: str = "document.readyState === 'complete'") -> float:
        """Navigate and wait until ready is true; the seconds from the request to ready."""
        started = time.monotonic()
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for(ready)
        return time.monotonic() - started

    def screenshot(self, full_page: bool = False) -> bytes:
        """A PNG of the viewport, or of the whole page."""
        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                             "height": size["height"], "scale": 1})
        return base64.b64decode(self.send("Page.captureScreenshot", params, session=True)["data"])

    def problems(self) -> list[str]:
        """What went wrong in the page so far: requests that failed or left the file (anything but file:
        and data: URLs), console errors and warnings, uncaught exceptions, browser log errors."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "about:")):
                    found.append(f"request to {url}")
            elif method == "Network.loadingFailed":
                found.append(f"failed request: {params.get('errorText')} ({params.get('type')})")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                shown = [a.get("value", a.get("description")) for a in params["args"]]
                found.append(f"console {params['type']}: {shown}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        return found
