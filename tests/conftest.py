"""Fixtures for the real-browser tests (marker `browser`): a JupyterLab server and headless Chromium.

Both skip, saying why, when their program is missing or cannot start (e.g. no Chromium on the machine).
CI installs them: apt-get install chromium chromium-driver; pip install selenium.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # git-ignored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab on 127.0.0.1, a free port and a random token, serving `tmp_path`.

    Yields {"url", "token", "root"}. The server and its kernels are killed afterwards, whatever happens.
    """
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyterlab.log", "wb")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.port_retries=0", "--allow-root",
           # no network: no extension manager index, no update check, no news feed
           "--LabApp.extension_manager=readonly", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.news_url=None"]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.skip(f"JupyterLab did not start: see {tmp_path / 'jupyterlab.log'}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "root": tmp_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and the kernels it started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium driven by Selenium, with the chromedriver given explicitly (no downloads)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.skip(f"{path} not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as e:  # noqa: BLE001 - any start failure means: no browser here
        pytest.skip(f"headless Chromium could not start: {type(e).__name__}: {str(e)[:300]}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def device_reads(monkeypatch):
    """count(fn) runs fn and returns the names of every device-to-Python read it made.

    Every way a value travels from the device to Python: .item(), .tolist(), bool(), float(), int(); each one
    synchronises a GPU, so a meta-step should make at most one.
    """
    import torch

    def count(fn):
        reads = []
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
                original = getattr(torch.Tensor, name)

                def counted(self, *args, _original=original, _name=name, **kwargs):
                    reads.append(_name)
                    return _original(self, *args, **kwargs)

                m.setattr(torch.Tensor, name, counted)
            fn()
        return reads

    return count
