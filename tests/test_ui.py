"""The web page (/ui) and the offline API docs (/docs, /redoc), in a real headless Chromium (Debian's
`chromium` driven by Selenium through `chromedriver`) against the live service: one private Ray
cluster for the module, serve_config.yaml deployed through the `serve` CLI, with API keys required so
the key prompt is part of every flow.

The browser resolves no host name but 127.0.0.1 (`--host-resolver-rules`), so a page that needs the
internet fails here as it would on an air-gapped cluster. Each flow ends with no unexpected SEVERE
entry in the browser console (the network errors a flow provokes on purpose, a 401 or 422, are
named) and leaves a full-page screenshot in $LENSING_UI_SCREENSHOTS (default: a temporary folder).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.io import fits

from harness.serve import REPO, LiveService
from lensing.io import write_fits
from lensing.synthetic import MapRequest, generate_map
from tests.conftest import API_KEY

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="no Chromium here: apt-get install chromium chromium-driver")]

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]  # no internet but loopback
WIDTH = 1400
PACKAGE_CARD = REPO / "lensing" / "weights" / "pinn_card.json"
PLOTS = REPO / "lensing" / "weights" / "plots"
# ReDoc's standalone bundle always renders a "Redocly" logo from its CDN (it hides it when the load
# fails): the one outside request either docs page makes, and the only console error allowed there.
REDOC_LOGO = "cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture(scope="module", autouse=True)
def _release(release_hardened):
    yield


@pytest.fixture
def live(hardened) -> LiveService:
    """The hardened deployment that tests/test_faults.py and test_schemathesis.py share (keys required)."""
    return hardened


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("LENSING_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = 60, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser console entries since the last call, except those containing an `allowed` text."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)]


def screenshot(driver, path: Path) -> None:
    """A full-page screenshot: the window is made as tall as the page for the shot."""
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(height + 140, 6000))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 1000)


def find(driver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def text(driver, css: str) -> str:
    return find(driver, css).text


def type_into(driver, css: str, value) -> None:
    control = find(driver, css)
    control.clear()
    control.send_keys(str(value))


def open_page(driver, live: LiveService) -> None:
    """/ui in a fresh tab state (no key in sessionStorage), ready to use."""
    driver.get(live.url("/ui"))
    driver.execute_script("sessionStorage.clear()")
    driver.get(live.url("/ui"))
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), 30, "page not ready")


def enter_key(driver, key: str = API_KEY) -> None:
    type_into(driver, "#api-key", key)
    find(driver, "#key-form button[type=submit]").click()


@pytest.fixture
def page(browser, live):
    """The browser on /ui with the API key accepted; the console drained of earlier entries."""
    open_page(browser, live)
    enter_key(browser)
    wait(browser, lambda d: "Key accepted" in text(d, "#api-key-status"), 30, "the key was not accepted")
    console_errors(browser)
    return browser


def downloaded(folder: Path, suffix: str, timeout: float = 30) -> Path:
    """The file with `suffix` that the browser finished saving into `folder`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob(f"*{suffix}") if p.stat().st_size > 0]
        if done:
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no {suffix} download in {folder}: {list(folder.iterdir())}")


@pytest.fixture
def fits_file(tmp_path) -> tuple[Path, MapRequest]:
    """A FITS map written by the library (with its geometry and host cards)."""
    request = MapRequest(profile_type="Elliptical NFW", M_vir=3e13, concentration=5.0, ellipticity=0.2,
                         position_angle=30.0, grid_size=64, fov_kpc=800.0, z_lens=0.4, z_source=1.5)
    path = tmp_path / "halo.fits"
    write_fits(path, generate_map(request))
    return path, request


# --- over HTTP ---------------------------------------------------------------------------------------


def test_page_docs_and_card_routes_over_http(live):
    page = requests.get(live.url("/ui"), timeout=30)  # open without a key, as are its assets
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert requests.head(live.url("/ui"), timeout=30).status_code == 200
    slash = requests.get(live.url("/ui/"), timeout=30, allow_redirects=False)
    assert slash.status_code == 308 and slash.headers["location"] == "../ui"
    for asset in ("ui/static/ui.css", "ui/static/js/main.js", "ui/static/favicon.svg"):
        response = requests.get(live.url(f"/{asset}"), timeout=30)
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache", asset
    assert requests.get(live.url("/ui/static/../page.py"), timeout=30).status_code == 404
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert requests.get(live.url(f"/docs/assets/{asset}"), timeout=30).status_code == 200, asset

    assert requests.get(live.url("/api/v1/models/card"), timeout=30).status_code == 401
    card = requests.get(live.url("/api/v1/models/card"), headers=AUTH, timeout=30)
    assert card.status_code == 200 and card.json() == json.loads(PACKAGE_CARD.read_text())
    listing = requests.get(live.url("/api/v1/models/card/plots"), headers=AUTH, timeout=30).json()["plots"]
    assert [p["name"] for p in listing] == sorted(p.name for p in PLOTS.glob("*.png")) and listing
    for plot in listing:
        image = requests.get(live.url(plot["url"]), headers=AUTH, timeout=30)
        assert image.headers["content-type"] == "image/png" and image.content == (PLOTS / plot["name"]).read_bytes()
    for name in ("nope.png", "pinn_card.json", "..%2Fpinn_card.json", "..%2F..%2Fweights%2Fpinn.safetensors", "..png"):
        response = requests.get(live.url(f"/api/v1/models/card/plots/{name}"), headers=AUTH, timeout=30)
        assert response.status_code == 404, name
    spec = requests.get(live.url("/openapi.json"), timeout=30).json()
    card_paths = {"/api/v1/models/card", "/api/v1/models/card/plots", "/api/v1/models/card/plots/{name}"}
    assert card_paths <= set(spec["paths"])
    assert not {"/ui", "/docs", "/redoc"} & set(spec["paths"])


# --- /docs and /redoc with no internet ----------------------------------------------------------------


def test_docs_render_with_the_network_off(browser, live, screenshots):
    console_errors(browser)
    browser.get(live.url("/docs"))
    title = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), 30,
                 "Swagger UI did not render")[0]
    assert "Lensing Serve" in title.text
    assert find(browser, ".swagger-ui .btn.authorize").is_displayed()  # keys are on: the bearer scheme
    assert browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/api/v1/inference']")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(live.base_url + "/") for url in resources), resources
    browser.save_screenshot(str(screenshots / "docs.png"))  # the top: the whole list is very long
    assert console_errors(browser) == []

    browser.get(live.url("/redoc"))
    heading = wait(browser, lambda d: [h for h in d.find_elements(By.TAG_NAME, "h1") if "Lensing Serve" in h.text],
                   30, "ReDoc did not render")
    assert heading and browser.find_elements(By.XPATH, "//*[contains(text(), '/api/v1/synthetic')]")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [url for url in resources if not url.startswith(live.base_url + "/")]
    assert all(REDOC_LOGO in url for url in outside), outside
    assert console_errors(browser, allowed=(REDOC_LOGO,)) == []


# --- the page ---------------------------------------------------------------------------------------


def test_key_prompt_keeps_the_key_in_the_session_only(browser, live):
    open_page(browser, live)
    console_errors(browser)
    assert find(browser, "#key-form").is_displayed()  # keys are on: the page asks
    enter_key(browser, "not-the-key-0123456789")
    error = wait(browser, lambda d: text(d, "#api-key-error"), 30, "no message for a wrong key")
    assert "valid API key" in error and find(browser, "#api-key").get_attribute("aria-invalid") == "true"
    assert browser.execute_script("return sessionStorage.length") == 0  # a refused key is dropped
    enter_key(browser)
    wait(browser, lambda d: "Key accepted" in text(d, "#api-key-status"), 30, "the key was not accepted")
    assert browser.execute_script("return sessionStorage.getItem('lensing-serve-api-key')") == API_KEY
    assert browser.execute_script("return localStorage.length") == 0
    assert console_errors(browser, allowed=("status of 401",)) == []


def test_first_paint_labels_and_keyboard_tabs(page, live):
    page.get(live.url("/ui"))
    wait(page, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), 30)
    paint = page.execute_script(
        "return performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0] ?? null")
    assert paint is not None and paint < 1000, paint
    unlabelled = page.execute_script("""return [...document.querySelectorAll('input, select')]
        .filter(c => c.labels.length === 0).map(c => c.id || c.name || c.outerHTML)""")
    assert unlabelled == []
    generate = find(page, "#tab-generate")
    generate.click()
    generate.send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element.get_attribute("id") == "tab-infer"
    assert find(page, "#panel-infer").is_displayed() and not find(page, "#panel-generate").is_displayed()
    page.switch_to.active_element.send_keys(Keys.END)
    assert find(page, "#tab-model").get_attribute("aria-selected") == "true"
    page.switch_to.active_element.send_keys(Keys.HOME)
    assert find(page, "#panel-generate").is_displayed()
    assert console_errors(page) == []


def test_generate_shows_the_map_and_downloads_it(page, screenshots, downloads):
    type_into(page, "#gen-mass", "2e13")
    type_into(page, "#gen-concentration", "6")
    find(page, "#gen-scenario option[value='CDM']").click()
    type_into(page, "#gen-seed", "7")
    find(page, "#generate-form button[type=submit]").click()
    wait(page, lambda d: "concentration" in text(d, "#generate-params"), 60, "no parameters shown")
    params = text(page, "#generate-params")
    assert "2.00×10¹³ M☉" in params and "CDM" in params and "kpc" in params and "concentration" in params
    canvas = find(page, "#generate-map canvas")
    colours = page.execute_script("""const c = arguments[0], g = c.getContext('2d');
        const d = g.getImageData(100 * devicePixelRatio, 40 * devicePixelRatio, 200, 200).data, seen = new Set();
        for (let k = 0; k < d.length; k += 4) seen.add(d[k] << 16 | d[k + 1] << 8 | d[k + 2]);
        return seen.size""", canvas)
    assert colours > 20  # a map, not a blank canvas
    assert "kpc" in canvas.get_attribute("aria-label")
    find(page, "#generate-map input[type=checkbox]").click()  # axes in arcsec
    assert "arcsec" in canvas.get_attribute("aria-label")
    screenshot(page, screenshots / "generate.png")

    for button, suffix in (("application/fits", ".fits"), ("application/x-npy", ".npy"), ("image/png", ".png")):
        find(page, f"[data-download='{button}']").click()
        saved = downloaded(downloads, suffix)
        data = saved.read_bytes()
        if suffix == ".fits":
            with fits.open(io.BytesIO(data)) as hdus:
                assert hdus[0].header["M_VIR"] == 2e13 and hdus[0].header["SEED"] == 7
                assert hdus[0].data.shape == (64, 64)
        elif suffix == ".npy":
            assert np.load(io.BytesIO(data)).shape == (64, 64)
        else:
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert console_errors(page) == []


def test_infer_an_uploaded_fits_with_intervals_classes_refinement_and_residual(page, screenshots, fits_file):
    path, request = fits_file
    find(page, "#tab-infer").click()
    find(page, "#infer-file").send_keys(str(path))
    wait(page, lambda d: "halo.fits, 64 × 64" in text(d, "#infer-source"), 30, "the file was not read")
    assert find(page, "#infer-fov-kpc").get_attribute("value") == "800"  # geometry from the FITS cards
    assert find(page, "#infer-z-lens").get_attribute("value") == "0.4"
    type_into(page, "#infer-mc-samples", "30")
    find(page, "#infer-form button[type=submit]").click()
    wait(page, lambda d: "RMS" in text(d, "#infer-residual-note"), 90, "no residual")
    table = text(page, "#infer-estimates table")
    assert "68 %" in table and "95 %" in table and "true" in table and "3.00×10¹³" in table
    assert page.find_elements(By.CSS_SELECTOR, "#infer-domain") == []  # a halo in the training box: no warning
    bars = page.find_elements(By.CSS_SELECTOR, "#infer-estimates svg circle")
    assert len(bars) == 6  # the legend, then one estimate per parameter row (M, r_s, e, centre x and y)
    assert len(page.find_elements(By.CSS_SELECTOR, "#infer-classes svg rect")) == 8  # 4 tracks, 4 bars
    assert "Predictive entropy" in text(page, "#infer-classes")
    assert "(given)" in text(page, "#infer-classes")  # the FITS NOISE card states the map's noise
    note = text(page, "#infer-residual-note")
    share = float(note.split("(")[1].split(" %")[0])
    assert share < 25, note  # the rendered estimate explains most of the smooth map
    assert find(page, "#infer-residual-map canvas").is_displayed()

    find(page, "#infer-refine").click()
    wait(page, lambda d: "Refined estimate shown" in text(d, "#infer-refine-status"), 180, "no refined estimate")
    wait(page, lambda d: "Residual of the refined estimate" in text(d, "#infer-residual-note"), 60,
         "no refined residual")
    assert "refined" in text(page, "#infer-estimates table thead")
    screenshot(page, screenshots / "infer.png")
    assert console_errors(page) == []


def test_infer_warns_when_the_estimate_lies_outside_the_training_domain(page, tmp_path):
    path = tmp_path / "galaxy.fits"  # a 1e12 Msun Duffy halo: r_s ~ 33 kpc, 0.03 of the field (trained: 0.05-0.5)
    write_fits(path, generate_map(MapRequest(M_vir=1e12, grid_size=64)))
    find(page, "#tab-infer").click()
    find(page, "#infer-file").send_keys(str(path))
    wait(page, lambda d: "galaxy.fits, 64 × 64" in text(d, "#infer-source"), 30, "the file was not read")
    type_into(page, "#infer-mc-samples", "10")
    find(page, "#infer-form button[type=submit]").click()
    warning = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#infer-domain"), 90, "no warning")[0].text
    assert warning.startswith("Outside the model's training domain: r_s estimate") and "0.05 to 0.5" in warning
    assert console_errors(page) == []


def test_batch_sweep_progress_reaches_100_with_plot_table_and_csv(page, screenshots, downloads):
    find(page, "#tab-batch").click()
    type_into(page, "#batch-sweep-from", "1e12")
    type_into(page, "#batch-sweep-to", "1e13")
    type_into(page, "#batch-steps", "4")
    type_into(page, "#batch-mc-samples", "10")
    symmetrize = find(page, "#batch-symmetrize")
    assert symmetrize.get_attribute("type") == "checkbox" and not symmetrize.is_selected()
    symmetrize.click()
    find(page, "#batch-form button[type=submit]").click()
    wait(page, lambda d: "completed" in text(d, "#batch-progress-text"), 120, "the batch did not complete")
    assert find(page, "#batch-progress").get_attribute("value") == "100"
    assert "4 of 4 maps done (100 %)" in text(page, "#batch-progress-text")
    assert find(page, "#batch-progress-text").get_attribute("aria-live") == "polite"
    assert len(page.find_elements(By.CSS_SELECTOR, "#batch-plot svg .point")) == 4
    assert len(page.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")) == 4
    domains = [row.find_elements(By.CSS_SELECTOR, "td")[5].text
               for row in page.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")]
    # Duffy et al. (2008) halos in a 1000 kpc field: r_s ~ 33 kpc at 1e12 Msun is under the training maps' 0.05
    # of the field, ~86 kpc at 1e13 inside
    assert domains[0] == "outside: r_s" and domains[3] == "inside", domains
    screenshot(page, screenshots / "batch.png")
    find(page, "#batch-csv").click()
    rows = list(csv.DictReader(io.StringIO(downloaded(downloads, ".csv").read_text())))
    assert [float(r["true_M_vir"]) for r in rows] == pytest.approx([1e12, 10 ** (12 + 1 / 3), 10 ** (12 + 2 / 3), 1e13])
    assert all(r["status"] == "completed" and float(r["M_vir_p2_5"]) < float(r["pred_M_vir"]) < float(r["M_vir_p97_5"])
               for r in rows)
    assert [r["symmetrized"] for r in rows] == ["true"] * 4  # the box ticked above reached every item
    assert console_errors(page) == []


def test_a_422_appears_beside_its_field(page, screenshots, fits_file):
    type_into(page, "#gen-z-lens", "1.0")
    type_into(page, "#gen-z-source", "0.8")  # behind the lens: a rule only the API checks
    find(page, "#generate-form button[type=submit]").click()
    error = wait(page, lambda d: text(d, "#gen-z-source-error"), 30, "no message beside z_source")
    assert "z_source must be larger than z_lens" in error
    control = find(page, "#gen-z-source")
    assert control.get_attribute("aria-invalid") == "true"
    assert "gen-z-source-error" in control.get_attribute("aria-describedby").split()
    assert find(page, "#gen-z-source-error").get_attribute("role") == "alert"
    assert page.switch_to.active_element.get_attribute("id") == "gen-z-source"  # focus lands on the fix
    assert text(page, "#gen-z-lens-error") == "" and "Traceback" not in page.page_source
    screenshot(page, screenshots / "error-422.png")

    # an uploaded map's options travel in the query: ["query", "mc_samples"] lands beside MC samples
    find(page, "#tab-infer").click()
    find(page, "#infer-file").send_keys(str(fits_file[0]))
    wait(page, lambda d: "halo.fits" in text(d, "#infer-source"), 30)
    type_into(page, "#infer-mc-samples", "0")
    find(page, "#infer-form button[type=submit]").click()
    error = wait(page, lambda d: text(d, "#infer-mc-samples-error"), 30, "no message beside MC samples")
    assert "greater than or equal to 1" in error
    assert console_errors(page, allowed=("status of 422",)) == []


def test_model_card_tab(page, screenshots):
    card = json.loads(PACKAGE_CARD.read_text())
    find(page, "#tab-model").click()
    heading = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#model-card h2"), 30, "no model card")[0]
    assert heading.text == f"{card['name']} {card['version']}"
    cells = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#model-card .confusion tbody td")]
    counts = [int(c.split(" ")[0]) for c in cells]
    assert counts == [n for row in card["metrics"]["confusion_matrix"] for n in row]
    smooth_mass = card["metrics"]["sets"]["smooth"]["network"]["coverage_68"]["log10_M_vir"]
    assert "Coverage" in text(page, "#model-card") and f"{100 * smooth_mass:.1f} %" in text(page, "#model-card")
    by_mass = card["metrics"]["sets"]["noisy_sigma_0.005"]["network"]["coverage_68_by_true_mass"]["log10_M_vir"]
    assert " / ".join(f"{100 * c:.1f} %" for c in by_mass) in text(page, "#model-card")  # faint to massive halos
    sidm = card["metrics"]["sets"]["scenarios"]["network"]["coverage_68_by_true_scenario"]["SIDM"]
    row = "scenarios, network SIDM " + " ".join(f"{100 * sidm[k]:.1f} %" for k in ("log10_M_vir", "log10_r_s",
                                                                                  "ellipticity"))
    rows = [r.text for r in page.find_elements(By.CSS_SELECTOR, "#model-card tr") if r.text.startswith(row[:23])]
    assert rows == [row], rows  # cored hosts' coverage, on the page
    assert "Training domain" in text(page, "#model-card") and "0.05 to 0.5 of the field of view" in text(
        page, "#model-card")
    assert card["calibration_command"] in text(page, "#model-card")  # a refit after training is on the page
    plots = sorted(p.name for p in PLOTS.glob("*.png"))
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model-card img")) == len(plots), 30)
    wait(page, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#model-card img')].every(i => i.complete && i.naturalWidth > 0)"), 30)
    screenshot(page, screenshots / "model.png")
    assert console_errors(page) == []
