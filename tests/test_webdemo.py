"""The web demo: its API over HTTP, and the page in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from pipeline import imaging
from tests import images
from webdemo import app as webapp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def client(trained_job):
    return TestClient(webapp.create_app(trained_job, max_upload_mb=1))


def _xray_jpeg(h=390, w=320) -> bytes:
    return imaging.encode(np.asarray(images.gradient(h, w)), "jpeg")


def test_api_scores_an_upload_and_draws_a_heatmap(client):
    info = client.get("/api/info").json()
    assert info["tasks"] == ["cardiomegaly", "atelectasis"] and info["threshold"] == 0.35
    r = client.post("/api/predict", files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")})
    assert r.status_code == 200
    body = r.json()
    assert set(body["probabilities"]) == {"cardiomegaly", "atelectasis"}
    assert body["positive"] == [t for t, p in body["probabilities"].items() if p >= 0.35]
    assert body["image"].startswith("data:image/png;base64,")
    h = client.post("/api/heatmap", params={"observation": "atelectasis"},
                    files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")})
    assert h.status_code == 200 and h.json()["overlay"].startswith("data:image/png;base64,")
    lateral = client.post("/api/predict", files={"file": ("view2_lateral.jpg", _xray_jpeg(), "image/jpeg")})
    assert "lateral" in lateral.json()["warnings"][0]


def test_api_errors_are_messages_not_stack_traces(client):
    r = client.post("/api/predict", files={"file": ("notes.jpg", b"hello, not an x-ray", "image/jpeg")})
    assert r.status_code == 400 and r.json() == {"error": "notes.jpg: this is not an image we can read (JPEG, PNG or DICOM)"}
    big = client.post("/api/predict", files={"file": ("big.png", b"\x89PNG" + bytes(2 * 2**20), "image/png")})
    assert big.status_code == 413 and "upload limit" in big.json()["error"]
    bad = client.post("/api/heatmap", params={"observation": "../../etc/passwd"},
                      files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")})
    assert bad.status_code == 400 and "unknown observation" in bad.json()["error"]
    assert client.post("/api/predict").status_code == 422  # no file: nothing on the server can be named
    assert client.get("/api/predict?path=/etc/passwd").status_code == 405


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_job):
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(webapp.create_app(trained_job), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_in_a_real_browser_upload_bars_heatmap_and_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(server)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    xray = tmp_path / "xray.jpg"
    xray.write_bytes(_xray_jpeg())
    file_input = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", file_input)
    file_input.send_keys(str(xray))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 2)
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [b.get_attribute("data-task") for b in bars] == ["cardiomegaly", "atelectasis"]
    assert all(b.find_element(By.CSS_SELECTOR, ".threshold").get_attribute("style") == "left: 35%;" for b in bars)
    assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png")
    bars[1].click()
    wait.until(lambda d: (d.find_element(By.ID, "heatmap").get_attribute("src") or "").startswith("data:image/png"))
    assert browser.find_element(By.ID, "heatmap").is_displayed()
    assert "Atelectasis" in browser.find_element(By.ID, "heatmap-label").text
    browser.save_screenshot(str(tmp_path / "scored.png"))
    bad = tmp_path / "report.pdf"
    bad.write_bytes(b"%PDF-1.4 not an x-ray")
    file_input.send_keys(str(bad))
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "report.pdf: this is not an image" in browser.find_element(By.ID, "error").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    browser.save_screenshot(str(tmp_path / "error.png"))
    assert (tmp_path / "scored.png").stat().st_size > 10_000
