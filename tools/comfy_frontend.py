"""A real ComfyUI server with this pack, and its real web frontend in headless Chromium (Playwright).

Used by ``tests/browser`` and ``tools/make_thumbnails.py``. The server runs ``$COMFYUI_DIR/main.py`` on CPU on
a free port with a temporary ``--base-directory`` (``custom_nodes/ComfyUI-EDiT`` is a symlink to this
repository, settings pre-seeded so no first-run dialog or minimap shows), so nothing is written to ComfyUI's
own folder. ``missing()`` says what is absent (ComfyUI, the frontend package, Playwright, Chromium) so callers
can skip with that reason. Traps handled here are described in the README's "Testing against ComfyUI".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_DIR_NAME = "ComfyUI-EDiT"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}
# frontend 1.27.10 throws this once on every boot, in its settings store (nothing to do with packs)
KNOWN_BOOT_ERRORS = ("Cannot read properties of undefined (reading 'id')",)
APP_READY = "() => window.app && app.graph && app.graph._nodes.length > 0 && app.extensions.length > 0"


def chromium_path() -> Optional[str]:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    return next((p for p in CHROMIUM_CANDIDATES if os.path.isfile(p)), shutil.which("chromium"))


def missing(python: str = sys.executable) -> Optional[str]:
    """Why the frontend cannot run here (None when everything is present)."""
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        return "COMFYUI_DIR is not set: tests/browser need a real ComfyUI (see README, Testing against ComfyUI)"
    if not os.path.isfile(os.path.join(comfyui_dir, "main.py")):
        return f"COMFYUI_DIR={comfyui_dir} has no main.py"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install playwright (no browser download needed)"
    if chromium_path() is None:
        return "Chromium is not installed: apt-get install chromium (or set CHROMIUM=/path/to/chrome)"
    probe = subprocess.run([python, "-c", "import comfyui_frontend_package"], capture_output=True)
    if probe.returncode != 0:
        return "the ComfyUI frontend is not installed: pip install -r $COMFYUI_DIR/requirements.txt"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``python main.py --cpu`` in a temporary base directory; ``url`` once ``start()`` returns."""

    def __init__(self, comfyui_dir: Optional[str] = None, base_dir: Optional[str] = None, python: str = sys.executable):
        self.comfyui_dir = os.path.abspath(comfyui_dir or os.environ["COMFYUI_DIR"])
        self._own_base = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="edit-comfy-")
        self.python, self.port, self.process, self.url = python, free_port(), None, None
        self.log_path = os.path.join(self.base_dir, "comfyui.log")

    def path(self, *parts: str) -> str:
        return os.path.join(self.base_dir, *parts)

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        for sub in ("custom_nodes", "models/edit", "user/default", "input", "output"):
            os.makedirs(self.path(sub), exist_ok=True)  # custom_nodes must exist before main.py scans it
        link = self.path("custom_nodes", PACK_DIR_NAME)
        if not os.path.lexists(link):
            os.symlink(REPO, link)
        with open(self.path("user", "default", "comfy.settings.json"), "w") as f:
            json.dump(SETTINGS, f)
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", self.base_dir, "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
                   "--disable-auto-launch"]
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:  # object_info answers once every node is loaded
                with urllib.request.urlopen(f"{url}/object_info/EDiTApply", timeout=5) as response:
                    if response.status == 200 and json.load(response):
                        self.url = url
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""

    def get(self, route: str) -> tuple[int, object]:
        """(status, JSON body or text) of GET ``route``."""
        try:
            with urllib.request.urlopen(self.url + route, timeout=30) as response:
                body, status = response.read(), response.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Debian's, driven by Playwright; Playwright downloads no browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_app(browser, url: str, width: int = 1600, height: int = 1000, scale: float = 1.0):
    """A page with the ComfyUI app booted; ``page.edit_errors`` collects page errors (known boot error left out)."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale)
    page = context.new_page()
    page.edit_errors = []

    def on_error(error) -> None:
        if not any(known in str(error) for known in KNOWN_BOOT_ERRORS):
            page.edit_errors.append(str(error))

    page.on("pageerror", on_error)
    page.goto(url + "/")
    page.wait_for_function(APP_READY, timeout=120_000)
    return page


def load_workflow(page, workflow: dict) -> None:
    """Load a workflow (UI format) into a fresh tab and fit it to the view."""
    page.evaluate("async wf => { await app.loadGraphData(wf); }", workflow)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)


__all__ = ["ComfyServer", "chromium", "open_app", "load_workflow", "missing", "chromium_path", "REPO",
           "PACK_DIR_NAME"]
