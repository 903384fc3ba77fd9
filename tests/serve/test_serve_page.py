"""The web page in headless Chromium: choose an image, wait for the answer, and check the
page (the overlay image loaded at the image's size, status announced, downloads ready,
nothing fetched from elsewhere) and the screenshot's pixels (the overlay region shows the
image with the green lesion contour). Skipped without Chromium, its driver or selenium.

SERVE_SCREENSHOT=path/to.png keeps the screenshot, with the model's own sampler instead of
2 steps x 2 members (docs/figures/serve_page.png is made so:
SERVE_SCREENSHOT=docs/figures/serve_page.png pytest tests/serve/test_serve_page.py).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_support import SKIP_WITHOUT_SERVE
from serve_support import pipeline, reference, sample_paths, server  # noqa: F401 (fixtures)

selenium = pytest.importorskip("selenium", reason="needs selenium (the test extra)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [SKIP_WITHOUT_SERVE, pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver;"
    " .ci/install_browser.sh)")]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1150", "--hide-scrollbars")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="dsd-chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_uploads_an_image_and_shows_the_overlay(server, browser, sample_paths,
                                                     reference, pipeline, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    keep = os.environ.get("SERVE_SCREENSHOT")
    path = sample_paths[0]
    ref = pipeline.segment([str(path)])[0] if keep else reference(path)
    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "Choose or drop"))
    assert browser.find_element(By.ID, "status").get_attribute("aria-live") == "polite"
    model = browser.find_element(By.ID, "model")
    assert [o.get_attribute("value") for o in model.find_elements(By.TAG_NAME, "option")] \
        == ["default"]
    # every control has a label
    for control in browser.find_elements(By.CSS_SELECTOR, "input, select"):
        cid = control.get_attribute("id")
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{cid}']"), cid
    browser.find_element(By.TAG_NAME, "summary").click()        # open the sampling options
    if not keep:
        browser.find_element(By.ID, "steps").send_keys("2")
        browser.find_element(By.ID, "ensemble").send_keys("2")
    browser.find_element(By.ID, "file").send_keys(str(path))   # choosing starts the request
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "Done:"))
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("Done: 1 of 1 segmented"), status
    assert not browser.find_element(By.ID, "progress").is_displayed()
    card = browser.find_element(By.CSS_SELECTOR, "#results .result")
    assert card.find_element(By.CSS_SELECTOR, "h2").text == path.name
    h, w = ref.mask.shape
    for kind in ("overlay", "probability", "uncertainty"):
        img = card.find_element(By.CSS_SELECTOR, f"img.{kind}")
        wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
        natural = browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
        assert natural == [w, h], kind
        assert img.get_attribute("alt") == f"{kind} of {path.name}"
    area = f"{100 * ref.mask.mean():.1f}%"
    assert f"Lesion area {area}" in card.find_element(By.CSS_SELECTOR, ".stats").text
    for kind in ("mask", "probability", "uncertainty", "overlay"):
        link = card.find_element(By.CSS_SELECTOR, f".dl-{kind}")
        assert link.get_attribute("href").startswith("data:image/png;base64,")
        assert link.get_attribute("download") == f"{path.stem}_{kind}.png"
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(server + "/") for r in resources), resources

    # the screenshot: the overlay's region holds the picture and its green contour
    overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    if keep:                          # 256 colours: the README's figure stays < 200 KB
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shot.quantize(256).save(keep, optimize=True)
    shot.save(tmp_path / "serve_page.png")
    ratio = browser.execute_script("return window.devicePixelRatio") or 1
    box = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.right, r.bottom]", overlay)
    left, top, right, bottom = (int(round(v * ratio)) for v in box)
    region = np.asarray(shot)[top:bottom, left:right].astype(int)
    assert region.shape[0] > 50 and region.shape[1] > 50, box
    assert region.std() > 10                                   # a picture, not a blank box
    green = (region[..., 1] > 180) & (region[..., 0] < 90) & (region[..., 2] < 90)
    assert green.sum() > 30, "no lesion contour in the overlay's region of the screenshot"
