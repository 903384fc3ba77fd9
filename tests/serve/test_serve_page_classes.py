"""The web page in headless Chromium with a model of several classes: the overlay's legend
shows each class in its colour, each class gets its probability and uncertainty figures at
the image's size, and the downloads are the label map and each class's maps. Skipped
without Chromium, its driver or selenium (as test_serve_page.py)."""
from __future__ import annotations

import pytest

from serve_support import SKIP_WITHOUT_SERVE
from serve_support import sample_paths  # noqa: F401 (fixture)
from test_serve_classes import CLASSES, class_server, model_file  # noqa: F401 (fixtures)
from test_serve_page import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401 (fixture)

pytestmark = [SKIP_WITHOUT_SERVE, pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver;"
    " .ci/install_browser.sh)")]


def test_page_shows_each_class(class_server, browser, sample_paths):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from dsd_fast.cli.class_outputs import CLASS_COLOURS
    path = sample_paths[0]
    with Image.open(path) as im:
        w, h = im.size
    browser.get(class_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "Choose or drop"))
    Select(browser.find_element(By.ID, "model")).select_by_value("eyes")
    browser.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "steps").send_keys("2")
    browser.find_element(By.ID, "ensemble").send_keys("2")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "Done:"))
    assert browser.find_element(By.ID, "status").text.startswith("Done: 1 of 1 segmented")
    card = browser.find_element(By.CSS_SELECTOR, "#results .result")
    legend = card.find_elements(By.CSS_SELECTOR, ".legend .class-item")
    assert [e.text.split(" (")[0] for e in legend] == list(CLASSES)
    for k, item in enumerate(legend):
        swatch = item.find_element(By.CSS_SELECTOR, ".swatch")
        r, g, b = CLASS_COLOURS[k]
        assert swatch.value_of_css_property("background-color") in (
            f"rgba({r}, {g}, {b}, 1)", f"rgb({r}, {g}, {b})")
    maps = card.find_elements(By.CSS_SELECTOR, "img.class-map")
    assert [(m.get_attribute("class").split()[0], m.get_attribute("data-class")) for m in maps] \
        == [(kind, c) for c in CLASSES for kind in ("probability", "uncertainty")]
    for img in maps + [card.find_element(By.CSS_SELECTOR, "img.overlay")]:
        wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
        assert browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [w, h]
    assert not card.find_elements(By.CSS_SELECTOR, "img.probability:not(.class-map)")
    names = [a.get_attribute("download") for a in card.find_elements(By.CSS_SELECTOR,
                                                                     ".downloads a")]
    stem = path.stem
    assert names == [f"{stem}_labels.png"] + [
        f"{stem}_{kind}_{c}.png" for c in CLASSES for kind in ("probability", "uncertainty")] \
        + [f"{stem}_overlay.png", f"{stem}_result.json"]
    assert "Class areas: disc" in card.find_element(By.CSS_SELECTOR, ".stats").text
