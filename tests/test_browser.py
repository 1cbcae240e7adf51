"""Notebook 04 in a real browser: JupyterLab on a loopback port, headless Chromium via Playwright.

Runs all cells, moves the explorer's patch slider by keyboard and by mouse drag, checks that the
panel image is redrawn each time, clicks the slide explorer's thumbnail (a real mouse click through
ipyevents) and checks that the patch moves, and saves screenshots (``$MSCOPY_ARTIFACTS`` or the test's tmp
folder). Uses the system Chromium (``$CHROMIUM`` or /usr/bin/chromium) through ``executable_path``;
never downloads a browser. Skips, saying why, when Chromium, Playwright or JupyterLab is missing.
Recipe and pitfalls: ../shared/recipes/browser-widget-test.md.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks" / "04_encoding_visualisation.ipynb"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-proxy-server", "--disable-dev-shm-usage",
]  # Playwright adds --headless
T = 90_000  # ms: the bound on every browser wait (a shared 2-core CI box can be slow)
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never via a proxy


def _require_browser() -> None:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium or set $CHROMIUM)")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A JupyterLab server on 127.0.0.1 serving a temporary root with a copy of notebook 04."""
    _require_browser()
    import torch

    from aeutils.checkpoint import save_checkpoint
    from aeutils.model import Autoencoder, AutoencoderConfig

    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NB, root / NB.name)  # autosave can never touch the source
    torch.manual_seed(0)  # a tiny random model: this tests the UI, not training quality
    ckpt = save_checkpoint(tmp_path / "tiny.pt", Autoencoder(AutoencoderConfig(widths=(8, 8, 4), n_blocks=1)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token, base = secrets.token_hex(16), f"http://127.0.0.1:{port}"
    settings = tmp_path / "settings"
    cfg = settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    cfg.parent.mkdir(parents=True)  # no "news?" toast, no update check
    cfg.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(
        os.environ,
        CI="true", MSCOPY_N_PATCHES="3", MSCOPY_CHECKPOINT=str(ckpt), MSCOPY_WORK=str(tmp_path / "work"),
        OMP_NUM_THREADS="2",
        JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
    )
    log_path = tmp_path / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"jupyter lab exited with {proc.returncode}, see {log_path}"
            try:
                HTTP.open(f"{base}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jupyter lab not answering after 90 s, see {log_path}") from None
                time.sleep(0.5)
        yield base, token, log_path
    finally:
        try:  # clean shutdown, kernels included
            HTTP.open(
                urllib.request.Request(f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}),
                timeout=5,
            ).close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_notebook04_explorer_in_chromium(lab: tuple[str, str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token, log_path = lab
    out = Path(os.environ.get("MSCOPY_ARTIFACTS", tmp_path / "artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(T)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{base}/lab/tree/{NB.name}?reset&token={token}")
            # the status bar, not the toolbar indicator (that says idle while still "No Kernel")
            idle = page.locator(
                "#jp-main-statusbar .jp-StatusBar-TextItem", has_text=re.compile(r"^(?!No Kernel).+ \| Idle$")
            )
            expect(idle).to_be_visible(timeout=T)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            # the last cell shows the slide explorer, whose status line names the patch centre;
            # a cell that raises stops Run All: fail at once with its traceback instead of timing out
            done = page.get_by_text(re.compile(r"patch centre \(\d+, \d+\) px"))
            failed = page.locator(  # JupyterLab renders a traceback as stderr text
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]', has_text="Traceback"
            )
            expect(done.or_(failed).first).to_be_visible(timeout=T)
            page.screenshot(path=str(out / "notebook04_run.png"))  # before any assertion that can fail below
            if failed.count():
                pytest.fail(f"a cell of {NB.name} raised in JupyterLab:\n{failed.first.inner_text()[-3000:]}")
            expect(idle).to_be_visible(timeout=T)
            explorer = page.locator(".mscopy-explorer")
            expect(explorer).to_have_count(1)
            explorer.scroll_into_view_if_needed()
            slider = explorer.locator(".widget-slider").first  # the patch index
            handle = slider.locator(".noUi-handle")
            readout = slider.locator(".widget-readout")
            img = explorer.locator("img.mscopy-explorer-panel")
            status = explorer.get_by_text(re.compile(r"^patch \d+ of 3"))
            expect(handle).to_be_visible(timeout=T)  # a real widget view, not the text fallback
            expect(readout).to_have_text("1", timeout=T)  # the slider counts from 1, like the title
            expect(status).to_contain_text("patch 1 of 3", timeout=T)
            expect(img).to_have_attribute("src", re.compile(r"^(blob:|data:image/png)"), timeout=T)
            src0 = img.get_attribute("src")

            handle.focus()  # keyboard: 1 -> 2
            page.keyboard.press("ArrowRight")
            expect(readout).to_have_text("2", timeout=T)
            expect(status).to_contain_text("patch 2 of 3", timeout=T)
            expect(img).not_to_have_attribute("src", src0, timeout=T)
            src1 = img.get_attribute("src")

            h = handle.bounding_box()
            track = slider.locator(".noUi-target").bounding_box()
            assert h is not None and track is not None
            y = h["y"] + h["height"] / 2
            page.mouse.move(h["x"] + h["width"] / 2, y)  # drag: -> the last patch
            page.mouse.down()
            page.mouse.move(track["x"] + track["width"] + 20, y, steps=10)
            page.mouse.up()
            expect(readout).to_have_text("3", timeout=T)
            expect(status).to_contain_text("patch 3 of 3", timeout=T)  # the final value, not an intermediate one
            expect(img).not_to_have_attribute("src", src1, timeout=T)
            expect(idle).to_be_visible(timeout=T)
            img.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "notebook04_explorer.png"))

            # the slide explorer: a mouse click on the slide thumbnail moves the patch there (ipyevents)
            slide_ex = page.locator(".mscopy-slide-explorer")
            expect(slide_ex).to_have_count(1)
            expect(slide_ex.get_by_text("(click or use the sliders)")).to_be_visible(timeout=T)
            thumb = slide_ex.locator("img.mscopy-slide-thumb")
            thumb.scroll_into_view_if_needed()
            centre = slide_ex.get_by_text(re.compile(r"patch centre \(\d+, \d+\) px"))
            before = centre.inner_text()
            box = thumb.bounding_box()
            assert box is not None and box["width"] > 20 and box["height"] > 20
            for fx, fy in ((0.2, 0.25), (0.75, 0.7)):  # two places: at least one is not where the patch already is
                thumb.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
                expect(idle).to_be_visible(timeout=T)
                if centre.inner_text() != before:
                    break
            expect(centre).not_to_have_text(before, timeout=T)
            page.screenshot(path=str(out / "notebook04_slide_click.png"))
            print(f"screenshots: {out}")
            assert not errors, f"page errors: {errors}"
        finally:
            browser.close()
