"""Real-browser test: the InnerLoopExplorer in JupyterLab, in headless Chromium, redraws when a slider moves.

The notebook is written into a temporary folder that a fresh JupyterLab serves; Chromium opens it, runs
all cells, presses the arrow key on the focused amplitude slider (as a learner would), and the test
checks that the kernel redrew: the PNG in the widget's Output changes. Screenshots before and after go
to test-artifacts/. Skips (with the reason) when selenium, Chromium or chromedriver is missing.
"""
import hashlib
import time

import nbformat
import pytest
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

CELLS = [
    "import torch\ntorch.set_num_threads(1)\nfrom mamlkit.experiments.sinusoid import make_mlp\n"
    "from mamlkit.widgets import InnerLoopExplorer",
    "torch.manual_seed(0)\nexplorer = InnerLoopExplorer(make_mlp(), make_mlp(), amplitude=2.0, inner_steps=3)\nexplorer",
]
IMG = ".jp-OutputArea-output .widget-output img"  # the PNG inside the widget's ipywidgets.Output


def wait_for(driver, condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(condition)
        if value:
            return value
        time.sleep(0.25)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "browser_timeout.png"))
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (screenshot: test-artifacts/browser_timeout.png)")


def img_hash(driver) -> str:
    src = driver.execute_script(f"const i = document.querySelector({IMG!r}); return i ? i.src : '';")
    assert src.startswith("data:image/png;base64,"), f"expected a PNG data URL in the Output, got {src[:60]!r}"
    return hashlib.sha256(src.encode()).hexdigest()


def test_slider_redraws_plot_in_jupyterlab(jupyter_lab, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, jupyter_lab["root"] / "widgets.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    driver = chromium
    driver.get(f"{jupyter_lab['url']}/lab/tree/widgets.ipynb?token={jupyter_lab['token']}")
    # the app is up, the notebook is open and its kernel is idle
    wait_for(driver, "return window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell') !== null", 90,
             "JupyterLab to open the notebook")
    wait_for(driver, "const w = window.jupyterapp.shell.currentWidget;"
                     "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                     " && w.sessionContext.session.kernel.status === 'idle');", 90, "the kernel to be idle")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    wait_for(driver, f"return document.querySelector({IMG!r}) !== null", 120, "the widget's plot to appear")
    before = img_hash(driver)
    driver.save_screenshot(str(ARTIFACTS / "browser_before.png"))
    readout = driver.find_elements(By.CSS_SELECTOR, ".widget-slider .widget-readout")[0]
    assert readout.text.startswith("2.0"), f"expected the amplitude readout 2.00, got {readout.text!r}"

    handle = driver.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")[0]  # the amplitude slider
    handle.click()
    for _ in range(3):
        handle.send_keys(Keys.ARROW_RIGHT)  # +0.1 each, as a learner would
    wait_for(driver, "const r = document.querySelector('.widget-slider .widget-readout');"
                     "return r && r.textContent.trim().startsWith('2.3');", 30, "the amplitude to read 2.3")
    wait_for(driver, f"const i = document.querySelector({IMG!r}); return i && i.src;", 5, "the image")
    deadline = time.time() + 30
    while img_hash(driver) == before and time.time() < deadline:
        time.sleep(0.25)
    driver.save_screenshot(str(ARTIFACTS / "browser_after.png"))
    assert img_hash(driver) != before, "the plot's PNG did not change after the amplitude slider moved"
    # no traceback in any output area
    errors = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert not [e.text for e in errors if "Error" in e.text], [e.text for e in errors]
