"""The web demo: its API over HTTP, and the page in a real headless Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import select
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from core import imaging
from tests import images
from serving import job as job_lib
from serving import preprocess
from serving.predict import predict_batch
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


def test_api_says_which_view_it_was_given_and_warns_only_for_a_lateral(client):
    from tests.images import dicom_with_view

    def post(name, data):
        body = client.post("/api/predict", files={"file": (name, data, "application/octet-stream")}).json()
        return body["view"], [w for w in body["warnings"] if "lateral" in w]

    assert post("x.jpg", _xray_jpeg()) == ("unknown", [])
    assert post("view1_frontal.jpg", _xray_jpeg()) == ("frontal", [])
    assert post("lateral_scan.jpg", _xray_jpeg()) == ("unknown", [])  # a frontal with a misleading name
    view, warned = post("scan.dcm", dicom_with_view("LL"))  # a lateral with a plain name: its tag says so
    assert view == "lateral" and warned == ["This looks like a lateral view; the model was trained on frontal views."]
    assert post("view2_lateral.jpg", _xray_jpeg())[0] == "lateral"


def test_a_lateral_is_warned_of_only_for_the_jobs_trained_on_frontal_views(trained_job, tmp_path):
    """A model trained with --views all is not said to be frontal-only: alone it gets no
    lateral warning; beside a frontal-only job the warning names that job alone."""
    from tests.images import dicom_with_view

    every = str(tmp_path / "all_views")
    os.makedirs(every)
    shutil.copy(os.path.join(trained_job, "model.keras"), every)
    for name in ("job_spec.json", "config.json"):
        with open(os.path.join(trained_job, name)) as f:
            d = json.load(f)
        assert d["views"] == "frontal"
        d["views"] = "all"
        with open(os.path.join(every, name), "w") as f:
            json.dump(d, f)

    def lateral_warnings(jobs):
        body = TestClient(webapp.create_app(jobs)).post(
            "/api/predict", files={"file": ("scan.dcm", dicom_with_view("LL"), "application/octet-stream")}).json()
        assert body["view"] == "lateral"
        return [w for w in body["warnings"] if "lateral" in w]

    assert lateral_warnings([every]) == []
    (warning,) = lateral_warnings([trained_job, every])
    assert "trained on frontal views only" in warning and "all_views" not in warning.split(";")[1]


def test_api_tells_the_training_data_of_the_model(client):
    info = client.get("/api/info").json()
    [job] = info["jobs"]
    assert job["tasks"] == ["cardiomegaly", "atelectasis"] and job["synthetic"] is True
    assert "SYNTHETIC" in job["provenance"] and job["trained"][:2] == "20"
    body = client.post("/api/predict", files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")}).json()
    assert body["jobs"] == info["jobs"]
    assert any("SYNTHETIC" in w for w in body["warnings"])


def _copy_job(src: str, dst, **provenance_edit) -> str:
    """A copy of job ``src`` at ``dst`` whose provenance is edited (``remove=True``: removed) in
    both files that carry it, config.json and job_spec.json."""
    shutil.copytree(src, dst)
    for name in ("config.json", "job_spec.json"):
        path = os.path.join(dst, name)
        with open(path) as f:
            cfg = json.load(f)
        if provenance_edit.get("remove"):
            del cfg["provenance"]
        else:
            cfg["provenance"].update(provenance_edit)
        with open(path, "w") as f:
            json.dump(cfg, f)
    return str(dst)


def _untrained_job(base_job: str, dst, tasks: tuple[str, ...], seed: int, **changes) -> str:
    """A job folder predicting ``tasks`` with freshly initialised weights (``seed``): the same
    preprocessing and provenance as ``base_job``, and a different answer from it."""
    import dataclasses

    import keras

    from trainer import model as model_lib
    from trainer.config import TrainConfig

    with open(os.path.join(base_job, "config.json")) as f:
        cfg = TrainConfig.from_json(f.read())
    cfg = dataclasses.replace(cfg, tasks=tasks, job_dir=str(dst), **changes)
    keras.utils.set_random_seed(seed)
    os.makedirs(dst)
    model_lib.probability_model(model_lib.build_model(cfg), cfg).save(os.path.join(dst, "model.keras"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        f.write(cfg.to_json())
    return str(dst)


@pytest.fixture(scope="module")
def single_jobs(trained_job, tmp_path_factory) -> dict[str, str]:
    """One-pathology jobs, as `make demo` trains them: atelectasis and cardiomegaly."""
    root = tmp_path_factory.mktemp("single_jobs")
    return {task: _untrained_job(trained_job, root / task, (task,), seed)
            for seed, task in enumerate(("atelectasis", "cardiomegaly"))}


def _own_probabilities(job_dir: str, data: bytes) -> dict[str, float]:
    job = job_lib.load_job(job_dir)
    probs = predict_batch(job, preprocess.model_input(data, "x.jpg", job.spec)[None])[0]
    return dict(zip(job.tasks, map(float, probs)))


def test_api_several_single_pathology_jobs_give_one_bar_each(single_jobs):
    client = TestClient(webapp.create_app([single_jobs["atelectasis"], single_jobs["cardiomegaly"]]))
    info = client.get("/api/info").json()
    assert info["tasks"] == ["cardiomegaly", "atelectasis"] and info["threshold"] == 0.35
    assert [j["name"] for j in info["jobs"]] == ["atelectasis", "cardiomegaly"]
    assert info["combine"] == {"cardiomegaly": {"mode": "single", "jobs": ["cardiomegaly"]},
                               "atelectasis": {"mode": "single", "jobs": ["atelectasis"]}}
    body = client.post("/api/predict", files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")}).json()
    expected = {**_own_probabilities(single_jobs["atelectasis"], _xray_jpeg()),
                **_own_probabilities(single_jobs["cardiomegaly"], _xray_jpeg())}
    assert body["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert list(body["probabilities"]) == ["cardiomegaly", "atelectasis"]
    assert body["combine"] == info["combine"] and body["thresholds"] == {"cardiomegaly": 0.35, "atelectasis": 0.35}
    heat = client.post("/api/heatmap", params={"observation": "atelectasis"},
                       files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")}).json()
    assert heat["job"] == "atelectasis" and heat["overlay"].startswith("data:image/png;base64,")


def test_api_heatmap_failure_is_a_message(client, caplog):
    """Until serving.gradcam.grad_cam handles 3-class heads, their heatmap is a 500 with a
    message (and the traceback in the server log), not a bare 'Internal Server Error'."""
    r = client.post("/api/heatmap", params={"observation": "cardiomegaly"},
                    files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")})
    if r.status_code == 200:  # grad_cam was fixed: the overlay is all there is to check
        assert r.json()["overlay"].startswith("data:image/png;base64,")
        return
    assert r.status_code == 500 and "Grad-CAM" in r.json()["error"] and "cardiomegaly" in r.json()["error"]


def test_api_heatmap_of_a_three_class_head(client):
    r = client.post("/api/heatmap", params={"observation": "cardiomegaly"},
                    files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")})
    assert r.status_code == 200, r.text


def test_api_jobs_predicting_the_same_pathology_are_an_ensemble_of_their_mean(trained_job, single_jobs):
    client = TestClient(webapp.create_app([trained_job, single_jobs["atelectasis"]]))
    base = os.path.basename(trained_job)
    info = client.get("/api/info").json()
    assert info["combine"] == {"cardiomegaly": {"mode": "single", "jobs": [base]},
                               "atelectasis": {"mode": "ensemble", "jobs": [base, "atelectasis"]}}
    body = client.post("/api/predict", files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")}).json()
    own_a, own_b = _own_probabilities(trained_job, _xray_jpeg()), _own_probabilities(single_jobs["atelectasis"],
                                                                                       _xray_jpeg())
    assert own_a["atelectasis"] != pytest.approx(own_b["atelectasis"], abs=1e-4)  # the mean is not trivial
    assert body["members"]["atelectasis"] == pytest.approx({base: own_a["atelectasis"],
                                                            "atelectasis": own_b["atelectasis"]}, abs=1e-6)
    assert body["probabilities"]["atelectasis"] == pytest.approx((own_a["atelectasis"] + own_b["atelectasis"]) / 2,
                                                                 abs=1e-6)
    assert body["probabilities"]["cardiomegaly"] == pytest.approx(own_a["cardiomegaly"], abs=1e-6)
    assert body["positive"] == [t for t, p in body["probabilities"].items() if p >= 0.35]
    # A heatmap comes from one member: the first by default, or the one asked for.
    files = {"file": ("x.jpg", _xray_jpeg(), "image/jpeg")}
    first = client.post("/api/heatmap", params={"observation": "atelectasis"}, files=files).json()
    other = client.post("/api/heatmap", params={"observation": "atelectasis", "job": "atelectasis"},
                        files=files).json()
    assert first["job"] == base and other["job"] == "atelectasis" and first["overlay"] != other["overlay"]
    wrong = client.post("/api/heatmap", params={"observation": "cardiomegaly", "job": "atelectasis"}, files=files)
    assert wrong.status_code == 400 and "does not predict cardiomegaly" in wrong.json()["error"]
    unknown = client.post("/api/heatmap", params={"observation": "atelectasis", "job": "../x"}, files=files)
    assert unknown.status_code == 400 and "unknown job" in unknown.json()["error"]


def test_several_jobs_that_cannot_be_combined_are_refused_when_the_app_starts(trained_job, single_jobs,
                                                                              tmp_path):
    with pytest.raises(job_lib.JobError, match="twice"):
        webapp.create_app([trained_job, trained_job])
    strict = _untrained_job(trained_job, tmp_path / "strict", ("atelectasis",), 3, threshold=0.5)
    with pytest.raises(job_lib.JobError, match="threshold"):
        webapp.create_app([single_jobs["atelectasis"], strict])
    assert webapp.main(["--job_dir", trained_job, "--job_dir", trained_job]) == 2


def test_api_provenance_of_older_and_real_data_jobs(trained_job, tmp_path):
    old = _copy_job(trained_job, tmp_path / "old", remove=True)
    real = _copy_job(trained_job, tmp_path / "real", synthetic=False, input_dir="/data/chexpert", records=1234)
    jobs = TestClient(webapp.create_app([old, real])).get("/api/info").json()["jobs"]
    assert [(j["name"], j["synthetic"]) for j in jobs] == [("old", None), ("real", False)]
    assert jobs[0]["provenance"].startswith("training data unknown") and jobs[0]["trained"] is None
    assert "SYNTHETIC" not in jobs[1]["provenance"] and "1234 images" in jobs[1]["provenance"]


def test_every_request_is_in_the_access_log_errors_included(client, caplog):
    caplog.set_level(logging.INFO, logger="webdemo.access")
    jpeg = _xray_jpeg()
    client.get("/")
    client.post("/api/predict", files={"file": ("x.jpg", jpeg, "image/jpeg")})
    client.post("/api/predict", files={"file": ("notes.jpg", b"hello", "image/jpeg")})
    client.post("/api/predict", files={"file": ("big.png", b"\x89PNG" + bytes(2 * 2**20), "image/png")})
    client.post("/api/predict")
    client.get("/api/predict")
    client.post("/api/heatmap", params={"observation": "nope\nGET / 200"},
                files={"file": ("x.jpg", jpeg, "image/jpeg")})
    lines = [r.getMessage() for r in caplog.records if r.name == "webdemo.access"]
    pattern = re.compile(r"^(GET|POST) (/\S*) (\d{3}) (\d+) ms(: .*)?$")
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[2], m[3]) for m in parsed] == [
        ("GET", "/", "200"), ("POST", "/api/predict", "200"), ("POST", "/api/predict", "400"),
        ("POST", "/api/predict", "413"), ("POST", "/api/predict", "422"), ("GET", "/api/predict", "405"),
        ("POST", "/api/heatmap?observation=nope%0AGET+%2F+200", "400")]
    assert "this is not an image" in lines[2] and "upload limit" in lines[3]
    assert all(len(line) < 300 for line in lines)  # the line says what happened, never the image
    assert not any("\n" in line for line in lines)


def test_access_log_says_500_for_an_app_that_raised(caplog):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    caplog.set_level(logging.INFO, logger="webdemo.access")
    scope = {"type": "http", "method": "GET", "path": "/x\r\nGET /forged", "query_string": b""}
    with pytest.raises(RuntimeError):
        asyncio.run(webapp.AccessLog(broken)(scope, None, None))
    [line] = [r.getMessage() for r in caplog.records if r.name == "webdemo.access"]
    assert re.fullmatch(r"GET /x\\r\\nGET /forged 500 \d+ ms", line), line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app):
    """Runs ``app`` in a real uvicorn server on a thread; yields its base URL."""
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


class HoldResponses:
    """ASGI wrapper for the browser tests: holds back the response to the next request on a
    path until the test releases it, so a late answer arrives exactly when the test says.

    Attributes:
        held: set once the held request's answer is ready and waiting.
        sent: set once it has been sent on.
    """

    def __init__(self, app):
        self.app = app
        self.path: str | None = None
        self.held, self.release, self.sent = threading.Event(), threading.Event(), threading.Event()

    def hold_next(self, path: str) -> None:
        self.path = path
        for event in (self.held, self.release, self.sent):
            event.clear()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        self.path = None  # one request only

        async def late_send(message):
            if message["type"] == "http.response.start":
                self.held.set()
                # Off the event loop: the server goes on answering other requests meanwhile.
                await asyncio.to_thread(self.release.wait, 60)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.sent.set()

        await self.app(scope, receive, late_send)


@pytest.fixture(scope="module")
def held_app(trained_job):
    return HoldResponses(webapp.create_app(trained_job))


@pytest.fixture(scope="module")
def server(held_app):
    yield from _serve(held_app)


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
                "--window-size=1200,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


# Three films a person could tell apart: a ramp, the ramp upside down, and its negative.
def _film(kind: str) -> bytes:
    ramp = np.asarray(images.gradient(390, 320))
    pixels = {"a": ramp, "b": ramp[::-1].copy(), "c": 255 - ramp}[kind]
    return imaging.encode(pixels, "jpeg")


# What the page would show for every <img>: shown (laid out and not display:none), whether
# it has a src, and its decoded width (0 for a broken or empty image).
_IMAGES_JS = """return [...document.images].map((i) => ({id: i.id, src: i.getAttribute('src') || '',
  shown: i.getClientRects().length > 0 && getComputedStyle(i).visibility !== 'hidden',
  complete: i.complete, width: i.naturalWidth}));"""


def _images(browser) -> dict:
    return {i["id"]: i for i in browser.execute_script(_IMAGES_JS)}


def _no_broken_images(browser) -> None:
    """Every <img> a person sees has decoded pixels: no empty or broken-image box."""
    for img in _images(browser).values():
        assert not img["shown"] or (img["complete"] and img["width"] > 0), f"a broken-image box is shown: {img}"


def _expected_image(server, name: str, data: bytes) -> str:
    """The preview the server returns for this upload (PNG data URL, deterministic)."""
    r = httpx.post(f"{server}/api/predict", files={"file": (name, data, "image/jpeg")}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["image"]


class Page:
    """The demo page in the browser, driven the way a person would."""

    def __init__(self, browser, server, tmp_path):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.by, self.browser, self.server, self.tmp = By, browser, server, tmp_path
        self.wait = WebDriverWait(browser, 30)
        browser.get(server)
        self.wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        self.input = browser.find_element(By.ID, "file")
        browser.execute_script("arguments[0].hidden = false", self.input)  # selenium types into visible inputs

    def el(self, id_: str):
        return self.browser.find_element(self.by.ID, id_)

    def text(self, id_: str) -> str:
        return self.el(id_).text

    def bars(self) -> list:
        return self.browser.find_elements(self.by.CSS_SELECTOR, "#bars .bar")

    def upload(self, name: str, data: bytes) -> None:
        path = self.tmp / name
        path.write_bytes(data)
        self.input.send_keys(str(path))

    def scored(self, image: str) -> None:
        """Waits until the bars are drawn and the preview shows ``image``."""
        self.wait.until(lambda d: self.bars() and _images(d)["preview"]["src"] == image
                        and _images(d)["preview"]["width"] > 0)

    def open_heatmap(self, task: str) -> str:
        """Clicks ``task``'s bar; returns the heatmap's src once it is shown."""
        bar = next(b for b in self.bars() if b.get_attribute("data-task") == task)
        bar.click()
        self.wait.until(lambda d: _images(d)["heatmap"]["src"].startswith("data:image/png")
                        and _images(d)["heatmap"]["width"] > 0)
        return _images(self.browser)["heatmap"]["src"]

    def shot(self, name: str) -> None:
        """Saves what a person would see (the file input hidden again, as the page has it)."""
        path = self.tmp / f"{name}.png"
        self.browser.execute_script("arguments[0].hidden = true", self.input)
        self.browser.save_screenshot(str(path))
        self.browser.execute_script("arguments[0].hidden = false", self.input)
        assert path.stat().st_size > 5_000


def test_page_new_upload_and_error_clear_the_previous_patient(server, browser, tmp_path):
    page = Page(browser, server, tmp_path)
    # A fresh page: no image boxes at all, nothing busy, and the model's provenance in words.
    _no_broken_images(browser)
    assert not any(i["shown"] for i in _images(browser).values())
    assert not page.el("busy").is_displayed()
    models = page.text("models")
    assert "SYNTHETIC" in models and "Cardiomegaly" in models and "Atelectasis" in models
    assert page.el("models").find_elements(page.by.CSS_SELECTOR, ".model.synthetic")
    page.shot("1-fresh")

    image_a, image_b = (_expected_image(server, n, _film(k)) for n, k in (("a.jpg", "a"), ("b.jpg", "b")))
    assert image_a != image_b
    page.upload("a.jpg", _film("a"))
    page.scored(image_a)
    assert [b.get_attribute("data-task") for b in page.bars()] == ["cardiomegaly", "atelectasis"]
    assert all(b.find_element(page.by.CSS_SELECTOR, ".threshold").get_attribute("style") == "left: 35%;"
               for b in page.bars())
    assert page.text("view") == "View unknown"  # a.jpg: neither a DICOM tag nor a CheXpert name
    heat_a = page.open_heatmap("atelectasis")
    assert "Atelectasis" in page.text("heatmap-label")
    _no_broken_images(browser)
    page.shot("2-a-with-heatmap")

    # Patient B: A's heatmap must go, and the image shown must be B's.
    page.upload("view1_frontal.jpg", _film("b"))
    page.scored(_expected_image(server, "view1_frontal.jpg", _film("b")))
    shown = _images(browser)
    assert not shown["heatmap"]["shown"] and shown["heatmap"]["src"] == "" and heat_a
    assert shown["preview"]["src"] == _expected_image(server, "view1_frontal.jpg", _film("b"))
    assert page.text("heatmap-label") == ""
    assert page.text("view") == "View: frontal" and "lateral" not in page.text("warnings")
    _no_broken_images(browser)
    page.shot("3-b-after-a")
    page.open_heatmap("atelectasis")

    # An error: B's image, heatmap, bars and view all go; only the message stays.
    page.upload("report.pdf", b"%PDF-1.4 not an x-ray")
    page.wait.until(lambda d: page.text("error"))
    assert "report.pdf: this is not an image" in page.text("error")
    shown = _images(browser)
    assert not shown["preview"]["shown"] and not shown["heatmap"]["shown"]
    assert shown["preview"]["src"] == "" and shown["heatmap"]["src"] == ""
    assert not page.bars() and page.text("view") == "" and page.text("heatmap-label") == ""
    assert not page.el("busy").is_displayed()
    _no_broken_images(browser)
    page.shot("4-error-after-b")

    # And the next good upload clears the error.
    page.upload("a2.jpg", _film("a"))
    page.scored(image_a)
    assert page.text("error") == ""


def test_page_busy_indicator_and_late_answers_never_paint_over_the_next_patient(server, held_app, browser,
                                                                                 tmp_path):
    page = Page(browser, server, tmp_path)
    image_a = _expected_image(server, "a.jpg", _film("a"))
    image_b = _expected_image(server, "b.jpg", _film("b"))
    page.upload("b.jpg", _film("b"))
    page.scored(image_b)
    page.open_heatmap("atelectasis")

    # C's answer is held back: while it is out the page says so and shows nothing of B.
    held_app.hold_next("/api/predict")
    page.upload("c.jpg", _film("c"))
    assert held_app.held.wait(30)
    busy = page.el("busy")
    assert busy.is_displayed() and "Scoring c.jpg" in busy.text
    shown = _images(browser)
    assert not shown["preview"]["shown"] and not shown["heatmap"]["shown"] and not page.bars()
    page.shot("5-busy")

    # Then A is uploaded and answered first; C's late answer must not replace it.
    page.upload("a.jpg", _film("a"))
    page.scored(image_a)
    assert not page.el("busy").is_displayed()
    held_app.release.set()
    assert held_app.sent.wait(30)
    page.wait.until(lambda d: d.find_element(page.by.TAG_NAME, "body").get_attribute("data-stale") == "1")
    assert _images(browser)["preview"]["src"] == image_a
    assert not _images(browser)["heatmap"]["shown"]

    # The same for a heatmap: A's Grad-CAM, answered after B was uploaded, is not drawn on B.
    held_app.hold_next("/api/heatmap")
    next(b for b in page.bars() if b.get_attribute("data-task") == "atelectasis").click()
    assert held_app.held.wait(30)
    assert "heatmap" in page.el("busy").text
    page.upload("b2.jpg", _film("b"))
    page.scored(image_b)
    held_app.release.set()
    assert held_app.sent.wait(30)
    page.wait.until(lambda d: d.find_element(page.by.TAG_NAME, "body").get_attribute("data-stale") == "2")
    shown = _images(browser)
    assert shown["preview"]["src"] == image_b and not shown["heatmap"]["shown"] and shown["heatmap"]["src"] == ""
    assert page.text("heatmap-label") == "" and not page.el("busy").is_displayed()
    page.shot("6-after-late-answers")

# --- Under load: upload limits and the scoring slots, on a real server ---------------------

LIMIT_MB = 1
BOUNDARY = "demoBoundary7MA4YWxk"


def _form(filename: str, data: bytes) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _head(url: str, path: str, *, length: int | None = None, expect: bool = False) -> bytes:
    """Request line and headers; no Content-Length means a chunked body."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.split('//')[1]}",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _connect(url: str) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP response from ``sock``: (status, lower-cased headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        assert got, f"connection closed before a response: {buf!r}"
        buf += got
    head, body = buf.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    if "content-length" in headers:
        while len(body) < int(headers["content-length"]):
            got = sock.recv(65536)
            assert got, "connection closed inside the response body"
            body += got
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def load_server(trained_job):
    yield from _serve(webapp.create_app(trained_job, max_upload_mb=LIMIT_MB, max_concurrent=2))


def test_declared_oversize_upload_is_refused_before_its_body_is_read(load_server):
    declared = 300 * 2**20
    with _connect(load_server) as sock:
        start = time.perf_counter()
        sock.sendall(_head(load_server, "/api/predict", length=declared) + b"\0" * 65536)
        status, _, body = _read_response(sock)
        elapsed = time.perf_counter() - start
    # The answer came with 64 KB of the declared 300 MB sent: the server did not wait for the body.
    assert status == 413 and elapsed < 5
    assert json.loads(body) == {"error": f"upload: {declared:,} bytes is larger than the 1 MB upload limit"}


def test_chunked_oversize_upload_is_refused_while_streaming(load_server):
    chunk = 64 * 1024
    prefix = _form("huge.png", b"")[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    with _connect(load_server) as sock:
        sock.sendall(_head(load_server, "/api/predict"))
        sock.sendall(b"%x\r\n%s\r\n" % (len(prefix), prefix))
        sent = 0
        # Sends 64 KB chunks while the server reads them, until it answers: it must answer
        # long before 300 MB (what the server takes in is bounded by the ASGI-level test below).
        while sent < 300 * 2**20:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable or not writable:
                break
            sock.sendall(b"%x\r\n%s\r\n" % (chunk, b"\x89" * chunk))
            sent += chunk
        status, _, body = _read_response(sock)
    assert status == 413 and sent < 20 * 2**20
    assert json.loads(body) == {"error": "huge.png: larger than the 1 MB upload limit"}


def _asgi_post(app, headers: list[tuple[bytes, bytes]], chunks, path: str = "/api/predict"):
    """Calls the ASGI app as a server would, counting the body bytes it asks for.

    Returns:
        (status, body, bytes of the request body the app received).
    """
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test")] + headers, "client": ("127.0.0.1", 1), "server": ("test", 80)}
    pulled, sent = [0], []
    chunks = iter(chunks)

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled[0]


@pytest.fixture(scope="module")
def small_app(trained_job):
    return webapp.create_app(trained_job, max_upload_mb=LIMIT_MB, max_concurrent=1)


def test_the_app_reads_no_more_than_the_limit_plus_one_chunk(small_app):
    limit, chunk = LIMIT_MB * 2**20, 256 * 1024
    ctype = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    prefix = _form("huge.png", b"")[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    endless = (prefix if i == 0 else b"\x89" * chunk for i in range(10_000))  # 2.5 GB if all read
    status, body, pulled = _asgi_post(small_app, ctype + [(b"transfer-encoding", b"chunked")], endless)
    assert status == 413 and body == {"error": "huge.png: larger than the 1 MB upload limit"}
    assert pulled <= limit + chunk + len(prefix)
    # Declared too large: not one byte of the body is asked for.
    status, body, pulled = _asgi_post(small_app, ctype + [(b"content-length", b"314572800")], [b"\0" * chunk])
    assert status == 413 and pulled == 0
    # A file of exactly the limit is accepted (then rejected as an image, which it is not).
    form = _form("exact.jpg", b"\0" * limit)
    status, body, pulled = _asgi_post(small_app, ctype + [(b"content-length", str(len(form)).encode())],
                                      [form[i:i + chunk] for i in range(0, len(form), chunk)])
    assert status == 400 and body == {"error": "exact.jpg: this is not an image we can read (JPEG, PNG or DICOM)"}


def test_requests_beyond_the_scoring_slots_get_503_with_retry_after(load_server):
    good = _form("x.jpg", _xray_jpeg())
    # Errors first: a rejected request must give its slot back.
    for _ in range(3):
        r = httpx.post(f"{load_server}/api/predict", files={"file": ("bad.jpg", b"not an image", "image/jpeg")})
        assert r.status_code == 400 and r.json()["error"] == "bad.jpg: this is not an image we can read (JPEG, PNG or DICOM)"
    # Hold both slots: with Expect: 100-continue the server says "100 Continue" only when the
    # app starts reading the body, i.e. after it took a slot.
    holders = []
    for _ in range(2):
        sock = _connect(load_server)
        sock.sendall(_head(load_server, "/api/predict", length=len(good), expect=True))
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        holders.append(sock)

    def post(_):
        return httpx.post(f"{load_server}/api/predict", files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")},
                          timeout=30)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        busy = list(pool.map(post, range(4)))
    assert [r.status_code for r in busy] == [503] * 4
    assert all(r.headers["retry-after"] == "1" and "busy" in r.json()["error"] for r in busy)
    for sock in holders:  # the held requests finish normally
        sock.sendall(good)
        status, _, body = _read_response(sock)
        sock.close()
        assert status == 200 and set(json.loads(body)["probabilities"]) == {"cardiomegaly", "atelectasis"}
    assert post(0).status_code == 200  # and the slots are free again


@pytest.fixture(scope="module")
def panel_server(trained_job, tmp_path_factory):
    """Three jobs as a person might serve them: the two-task synthetic test job, an
    atelectasis job with real-data provenance (so atelectasis is an ensemble of two), and an
    edema job from before provenance was recorded."""
    root = tmp_path_factory.mktemp("panel")
    real = {"synthetic": False, "input_dir": "/data/chexpert", "records": 223414,
            "trained": "2026-11-20T10:00:00+00:00"}
    jobs = [trained_job, _untrained_job(trained_job, root / "atelectasis-real", ("atelectasis",), 5, provenance=real),
            _untrained_job(trained_job, root / "edema-old", ("edema",), 6, provenance={})]
    yield from _serve(webapp.create_app(jobs))


def test_page_several_jobs_say_which_bar_is_an_ensemble_and_what_each_was_trained_on(panel_server, trained_job,
                                                                                   browser, tmp_path):
    page = Page(browser, panel_server, tmp_path)
    kinds = [m.get_attribute("class") for m in page.el("models").find_elements(page.by.CSS_SELECTOR, ".model")]
    assert kinds == ["model synthetic", "model real", "model unknown"]
    models = page.text("models")
    assert "SYNTHETIC" in models and "223414 images" in models and "training data unknown" in models
    page.upload("view1_frontal.jpg", _film("a"))
    page.scored(_expected_image(panel_server, "view1_frontal.jpg", _film("a")))
    sources = {b.get_attribute("data-task"): b.find_element(page.by.CSS_SELECTOR, ".source").text for b in page.bars()}
    assert list(sources) == ["cardiomegaly", "edema", "atelectasis"]
    assert sources["cardiomegaly"] == f"from {os.path.basename(trained_job)}" and sources["edema"] == "from edema-old"
    assert sources["atelectasis"].startswith(f"ensemble, mean of 2 jobs: {os.path.basename(trained_job)} 0.")
    assert "atelectasis-real" in sources["atelectasis"]
    page.open_heatmap("atelectasis")
    assert page.text("heatmap-label") == f"Grad-CAM: Atelectasis (job {os.path.basename(trained_job)})"
    atelectasis = next(b for b in page.bars() if b.get_attribute("data-task") == "atelectasis")
    atelectasis.find_element(page.by.XPATH, ".//button[text()='atelectasis-real']").click()
    page.wait.until(lambda d: page.text("heatmap-label") == "Grad-CAM: Atelectasis (job atelectasis-real)"
                    and _images(d)["heatmap"]["width"] > 0)
    _no_broken_images(browser)
    page.shot("7-three-jobs")


def test_stalled_uploads_lose_their_slots_after_the_upload_deadline(trained_job):
    """Two clients that send headers and part of a body, then stall, would otherwise hold both
    scoring slots for as long as they keep their sockets open (everyone else: 503)."""
    good = _form("x.jpg", _xray_jpeg())
    for base in _serve(webapp.create_app(trained_job, max_upload_mb=LIMIT_MB, max_concurrent=2,
                                         upload_timeout_s=1.0)):
        stalled = []
        for _ in range(2):
            sock = _connect(base)
            sock.sendall(_head(base, "/api/predict", length=len(good)) + good[:100])
            stalled.append(sock)
        for sock in stalled:  # each gets 408 once its deadline passes, naming what it sent
            status, _, body = _read_response(sock)
            sock.close()
            assert status == 408 and "took longer than 1 s" in json.loads(body)["error"]
        r = httpx.post(f"{base}/api/predict", files={"file": ("x.jpg", _xray_jpeg(), "image/jpeg")}, timeout=30)
        assert r.status_code == 200  # the slots are free again


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(address)
    return found


def test_the_command_binds_to_loopback_by_default_and_says_the_model_is_synthetic(trained_job):
    """README: the web demo binds to 127.0.0.1 (--host to expose it). The real command, its
    defaults: the only listening socket on its port is the loopback one."""
    import subprocess
    import sys

    from tests import ROOT

    assert webapp.make_parser().parse_args([]).max_concurrent == 2  # one per core here, as documented
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "webdemo.app", f"--job_dir={trained_job}", f"--port={port}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listening(port) == ["0100007F"], proc.poll()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"serving {trained_job} on http://127.0.0.1:{port}" in out
    assert "trained on SYNTHETIC data" in err
