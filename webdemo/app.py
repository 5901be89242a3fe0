r"""The web demo (the seed project's GUI): drop an X-ray, see the model's answer.

    python -m webdemo.app --job_dir jobs/atelectasis          # http://127.0.0.1:8000
    python -m webdemo.app --job_dir jobs/atelectasis --job_dir jobs/cardiomegaly
    make gui

A FastAPI app with one static page. The page uploads the file; the server decodes it with
the records job's preprocessing, returns P(positive) per observation with the threshold, and
on request a Grad-CAM overlay. Requests carry image bytes only: no request names a path on
the server. Binds to 127.0.0.1 unless ``--host`` says otherwise.

Several ``--job_dir`` give one bar per pathology: a pathology one job predicts is that job's
answer, one that several predict is their mean (an ensemble), and the page says which. The
page names every job with what it was trained on (``schemas.job_spec.provenance_line``),
synthetic data above all, and the view the file states (``core.views``: frontal,
lateral or unknown). Every request, refused ones included, is one line of the
``webdemo.access`` log: method, path, status, milliseconds and the error message.

Memory under load is bounded. An upload above ``--max_upload_mb`` is refused with 413 from
its Content-Length before its body is read, and a body without one (chunked) is read a
chunk at a time and refused as soon as it passes the limit: the server parses the form
itself and never holds or spools more than the limit plus one chunk. At most
``--max_concurrent`` requests read and score an image at once; one more gets 503 with
Retry-After at once, rather than queueing its upload in memory. A request costs at most
the upload limit plus one image's decode (``core.imaging``: about 300 MB for the
largest image it accepts; BUILD_NOTES.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence


def make_parser() -> argparse.ArgumentParser:
    """The demo's flags (argparse only: parsed before TensorFlow loads, so --help is quick)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--job_dir", action="append", default=None,
                        help="A trainer.task job folder (default: make demo's jobs/atelectasis). Repeat it to serve "
                             "several: one bar per pathology, the mean of the jobs that predict the same one.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind; 0.0.0.0 exposes it to the network.")
    parser.add_argument("--port", type=int, default=8000, help="Port.")
    parser.add_argument("--max_upload_mb", type=float, default=20.0,
                        help="Largest accepted upload in MiB; larger ones get 413 before their body is read.")
    parser.add_argument("--upload_timeout_s", type=float, default=30.0,
                        help="A request's whole upload must arrive within this many seconds (else 408), so a "
                             "stalled client cannot hold a scoring slot.")
    parser.add_argument("--max_concurrent", type=int, default=2,
                        help="Requests scored at once (each holds up to one upload and one decoded image); "
                             "more get 503 with Retry-After. Default 2, one per core here.")
    parser.add_argument("--verbose", action="store_true",
                        help="Show TensorFlow's own start-up lines (hidden by default).")
    return parser


if __name__ == "__main__":  # flags first, then TensorFlow, quietly (serving/startup.py)
    from core import cli
    from serving import startup

    cli.require_extra("web", "webdemo")

    startup.load_tensorflow(make_parser().parse_args().verbose)

import numpy as np  # noqa: E402
from fastapi import FastAPI, HTTPException, Query, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse  # noqa: E402
from PIL import Image  # noqa: E402
from python_multipart.exceptions import MultipartParseError  # noqa: E402
from python_multipart.multipart import MultipartParser, parse_options_header  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402

from core import views  # noqa: E402
from schemas import chexpert  # noqa: E402
from schemas.job_spec import provenance_line  # noqa: E402
from serving import gradcam, preprocess  # noqa: E402
from serving import heatmap as heatmap_lib  # noqa: E402
from serving import job as job_lib  # noqa: E402
from serving.predict import predict_batch  # noqa: E402

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_JOB = "jobs/atelectasis"
# Room for the form around the file (boundaries, part headers, a browser's extra fields):
# the body limit is the upload limit plus this, so a file of exactly the limit is accepted.
FORM_OVERHEAD = 64 * 1024
RETRY_AFTER_S = 1  # scoring one image takes ~0.1 s on 2 cores: a second frees a slot
# Reasons of core.imaging (RowError.reason) as the page shows them after the file name.
MESSAGES = {
    "empty_file": "the file is empty",
    "not_an_image": "this is not an image we can read (JPEG, PNG or DICOM)",
    "truncated_image": "the image file is truncated",
    "image_too_large": "the image has too many pixels",
    "image_too_small": "the image is too small to be a radiograph",
    "nonfinite_pixels": "the image holds NaN or infinite pixel values",
    "dicom_unreadable": "the DICOM file cannot be decoded (compressed transfer syntax or damaged)",
}
log = logging.getLogger("webdemo")
access_log = logging.getLogger("webdemo.access")


class UploadError(Exception):
    """A request whose upload cannot be read: becomes an HTTP error with a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class FileField:
    """Collects the ``file`` part of a multipart/form-data body fed to it chunk by chunk.

    python-multipart's streaming parser calls back with each header and each slice of part
    data; only the ``file`` part's bytes are kept, and only up to ``limit``: past it the
    parse stops (``too_large``), so nothing beyond the limit and the current chunk is held.
    Starlette's own form parsing would spool the whole file to a temporary file first.

    Attributes:
        filename: the part's file name ("upload" when it gives none).
        data: the bytes received so far.
        too_large: the part went past ``limit``.
        complete: the body's closing boundary was seen.
    """

    def __init__(self, boundary: bytes, limit: int):
        self.limit = limit
        self.filename = "upload"
        self.data = bytearray()
        self.found = self.too_large = self.complete = False
        self._in_file = False
        self._header_name = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_val, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end})

    def _part_begin(self):
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int):
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int):
        self._header_value += data[start:end]

    def _header_end(self):
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        # The first part named "file" is the upload; any other part is read past, not kept.
        self._in_file = options.get(b"name") == b"file" and not self.found
        if self._in_file:
            self.found = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace") or "upload"

    def _part_data(self, data: bytes, start: int, end: int):
        if self._in_file and not self.too_large:
            if len(self.data) + (end - start) > self.limit:
                self.too_large = True
            else:
                self.data += data[start:end]

    def _part_end(self):
        self._in_file = False

    def _end(self):
        self.complete = True


async def read_file_field(request: Request, limit: int, max_upload_mb: float,
                          timeout_s: float = 30.0) -> tuple[str, bytes]:
    """Reads the ``file`` field of a multipart/form-data request, never holding more than
    ``limit`` bytes of it (plus one chunk of the body).

    The body is taken from the request stream chunk by chunk and fed to the parser; the
    whole body may be ``limit + FORM_OVERHEAD`` bytes at most. ``check_declared_size``
    should have refused a too-large Content-Length before this is called.

    Returns:
        (file name, file bytes).

    Raises:
        UploadError: 413 when the file or the body passes its limit, 422 when the request
            has no ``file`` field, 400 when the form is malformed or ends early, 408 when the
            body has not arrived within ``timeout_s``.
    """
    ctype, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(422, "no file in the request: send the image as the 'file' field of a multipart form")
    try:
        field = FileField(boundary, limit)
    except (MultipartParseError, ValueError) as e:  # e.g. an over-long boundary
        raise UploadError(400, f"upload: malformed form ({e})") from None
    received = 0
    try:
        # A deadline for the whole body: a client that sends headers and then stalls would
        # otherwise hold its scoring slot for as long as it keeps the socket open.
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit + FORM_OVERHEAD:
                    raise UploadError(413, f"{field.filename}: larger than the {max_upload_mb:g} MB upload limit")
                field.parser.write(chunk)
                if field.too_large:
                    raise UploadError(413, f"{field.filename}: larger than the {max_upload_mb:g} MB upload limit")
    except TimeoutError:
        raise UploadError(408, f"{field.filename or 'upload'}: the upload took longer than {timeout_s:g} s "
                               f"({received} bytes received); send it again") from None
    except MultipartParseError as e:
        raise UploadError(400, f"{field.filename}: malformed upload form ({e})") from None
    except ClientDisconnect:
        # Nobody is left to answer; an error (not a traceback in the log) ends the request.
        raise UploadError(400, f"{field.filename}: the client went away during the upload") from None
    if not field.found:
        raise UploadError(422, "no file in the request: send the image as the 'file' field of a multipart form")
    if not field.complete:
        raise UploadError(400, f"{field.filename}: the upload ended before the end of the form")
    return field.filename, bytes(field.data)


def check_declared_size(request: Request, limit: int, max_upload_mb: float) -> None:
    """Refuses a request whose Content-Length is over the body limit, before reading it.

    Raises:
        UploadError: 413 (too large) or 400 (a Content-Length that is not a number).
    """
    declared = request.headers.get("content-length")
    if declared is None:
        return  # chunked: read_file_field enforces the limit while streaming
    if not declared.strip().isdigit():
        raise UploadError(400, f"upload: Content-Length {declared!r} is not a byte count")
    if int(declared) > limit + FORM_OVERHEAD:
        raise UploadError(413, f"upload: {int(declared):,} bytes is larger than the {max_upload_mb:g} MB upload limit")


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _printable(text: str, limit: int = 200) -> str:
    """``text`` on one line, control characters escaped and cut at ``limit``: what a client
    sends (a path, a file name inside a message) must not forge or break log lines."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class AccessLog:
    """ASGI middleware: one ``webdemo.access`` line per request, errors included.

    ``METHOD PATH STATUS MS ms``, then ``: message`` when an error handler left one in the
    scope (``ERROR_KEY``). A request whose app raised is logged 500 and the exception goes
    on; one cancelled before it answered (the client went away) is logged with status ``-``.
    Neither bodies nor headers are logged: an upload's bytes never reach the log.
    """

    ERROR_KEY = "webdemo.error"

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception:
            status[0] = status[0] or 500  # what Starlette's error middleware answers outside us
            raise
        finally:
            path = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            ms = (time.perf_counter() - start) * 1000
            line = f"{scope['method']} {_printable(path)} {status[0] or '-'} {ms:.0f} ms"
            error = scope.get(self.ERROR_KEY)
            access_log.info("%s", line + (f": {_printable(error)}" if error else ""))


class ServeError(job_lib.JobError):
    """Jobs that load but cannot be served together; the message says which and why."""


def _job_names(job_dirs: Sequence[str]) -> list[str]:
    """The names the page shows: each job folder's name (``job/saved_model`` for an export),
    made unique with ``-2``, ``-3``... when two folders share one."""
    names: list[str] = []
    for job_dir in job_dirs:
        path = os.path.normpath(os.path.abspath(job_dir))
        name = os.path.basename(path)
        if name == "saved_model":
            name = f"{os.path.basename(os.path.dirname(path))}/{name}"
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}-{n}"
        names.append(unique)
    return names


class Panel:
    """The jobs the demo serves, and how their answers make one bar per pathology.

    A pathology that one job predicts is that job's probability (``single``); one that
    several jobs predict is the mean of theirs (``ensemble``, as ``trainer.evaluate``
    averages an ensemble). Jobs sharing a pathology must share its threshold.

    Attributes:
        jobs: name -> loaded job, in the order given.
        tasks: every pathology predicted, in ``chexpert.OBSERVATIONS`` order.
        members: task -> names of the jobs predicting it, in the order given.
        thresholds: task -> decision threshold.
    """

    def __init__(self, job_dirs: Sequence[str]):
        """Loads every job.

        Raises:
            job_lib.JobError: a folder without a usable model.
            ServeError: a folder given twice, no folder, or jobs that disagree on the
                threshold of a pathology they share.
        """
        if not job_dirs:
            raise ServeError("no --job_dir given")
        seen: dict[str, str] = {}
        for job_dir in job_dirs:
            real = os.path.realpath(job_dir)
            if real in seen:
                # Averaging a model with itself would call it an ensemble and weigh it twice.
                raise ServeError(f"{job_dir}: given twice (also as {seen[real]}); give each job once")
            seen[real] = job_dir
        self.jobs = dict(zip(_job_names(job_dirs), (job_lib.load_job(d) for d in job_dirs)))
        self.tasks = tuple(t for t in chexpert.OBSERVATIONS if any(t in j.tasks for j in self.jobs.values()))
        self.members = {t: [n for n, j in self.jobs.items() if t in j.tasks] for t in self.tasks}
        self.thresholds = {}
        for task, names in self.members.items():
            values = {self.jobs[n].spec.threshold for n in names}
            if len(values) > 1:
                raise ServeError(f"{', '.join(names)} all predict {task} but with different thresholds "
                                 f"({', '.join(f'{n}: {self.jobs[n].spec.threshold}' for n in names)}); "
                                 "their mean would have no agreed cut-off")
            self.thresholds[task] = values.pop()
        thresholds = set(self.thresholds.values())
        # The one threshold of a single job (the API's ``threshold`` before several jobs).
        self.threshold = thresholds.pop() if len(thresholds) == 1 else None

    @property
    def first(self) -> job_lib.Job:
        return next(iter(self.jobs.values()))

    def combine(self) -> dict[str, dict]:
        """task -> ``{"mode": "single" | "ensemble", "jobs": [names]}``."""
        return {t: {"mode": "ensemble" if len(names) > 1 else "single", "jobs": list(names)}
                for t, names in self.members.items()}

    def describe(self) -> list[dict]:
        """Per job: name, tasks, threshold, views, and what it was trained on (``provenance``:
        ``schemas.job_spec.provenance_line``; ``synthetic`` and ``trained`` are None for a job
        from before provenance was recorded). No server path is sent but the line's."""
        return [{"name": name, "tasks": list(job.tasks), "threshold": job.spec.threshold, "views": job.spec.views,
                 "synthetic": job.spec.synthetic, "trained": job.spec.provenance.get("trained"),
                 "provenance": provenance_line(job.spec.provenance)}
                for name, job in self.jobs.items()]

    def model_inputs(self, filename: str, data: bytes) -> dict[str, np.ndarray]:
        """name -> the image as that job saw its training data, uint8 (S, S, 1); decoded
        once per distinct preprocessing, since decoding costs more than a tiny model.

        Raises:
            schemas.chexpert.RowError: the file is not an image we can read.
        """
        by_recipe: dict[tuple, np.ndarray] = {}
        out = {}
        for name, job in self.jobs.items():
            recipe = (job.spec.records_image_size, job.spec.records_resize, job.spec.image_size)
            if recipe not in by_recipe:
                by_recipe[recipe] = preprocess.model_input(data, filename, job.spec)
            out[name] = by_recipe[recipe]
        return out

    def score(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Returns (task -> combined P(positive), task -> {job name: its P(positive)})."""
        per_job = {name: dict(zip(job.tasks, predict_batch(job, inputs[name][None])[0]))
                   for name, job in self.jobs.items()}
        members = {t: {n: float(per_job[n][t]) for n in names} for t, names in self.members.items()}
        return {t: float(np.mean(list(m.values()))) for t, m in members.items()}, members

    def warnings(self, view: str) -> list[str]:
        """What the page must say next to the answer: a lateral view given to frontal-only
        jobs, then every job trained on synthetic data."""
        out = []
        frontal_only = [n for n, j in self.jobs.items() if j.spec.views == "frontal"]
        if view == views.LATERAL and frontal_only:
            if len(self.jobs) == 1:
                out.append("This looks like a lateral view; the model was trained on frontal views.")
            else:
                out.append(f"This looks like a lateral view; {', '.join(frontal_only)} "
                           f"{'was' if len(frontal_only) == 1 else 'were'} trained on frontal views only.")
        for name, job in self.jobs.items():
            if job.spec.synthetic:
                who = "The model" if len(self.jobs) == 1 else name
                out.append(f"{who} was trained on SYNTHETIC data: its outputs say nothing about real radiographs.")
        return out

    def heatmap_job(self, observation: str, name: str | None) -> tuple[str, job_lib.Job]:
        """The job whose Grad-CAM is drawn: ``name``, or the first member with layers
        (a SavedModel has none).

        Raises:
            HTTPException: 400 for an observation no job predicts, an unknown job, or a job
                that does not predict the observation.
        """
        if observation not in self.members:
            raise HTTPException(400, f"unknown observation {observation!r}; the models predict {', '.join(self.tasks)}")
        if name is None:
            names = self.members[observation]
            name = next((n for n in names if self.jobs[n].is_keras), names[0])
        elif name not in self.jobs:
            raise HTTPException(400, f"unknown job {name!r}; the demo serves {', '.join(self.jobs)}")
        elif observation not in self.jobs[name].tasks:
            raise HTTPException(400, f"job {name} does not predict {observation}; "
                                f"{', '.join(self.members[observation])} do")
        return name, self.jobs[name]


def create_app(job_dirs: str | Sequence[str], *, max_upload_mb: float = 20.0, max_concurrent: int = 2,
               upload_timeout_s: float = 30.0) -> FastAPI:
    """Builds the app around one or several trained jobs (loaded once).

    Args:
        job_dirs: a trainer.task job folder or its SavedModel export, or several: one bar
            per pathology, the mean where several jobs predict the same one (``Panel``).
        max_upload_mb: the largest accepted file, MiB.
        max_concurrent: requests that may read and score an image at the same time; the
            next gets 503 with Retry-After.
        upload_timeout_s: a request's whole body must arrive within this, else 408 and its
            slot is free again (a stalled client cannot hold one).

    Raises:
        job_lib.JobError: a folder without a usable model, or jobs that cannot be served
            together (``ServeError``).
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent={max_concurrent}: at least one request must be served")
    panel = Panel([job_dirs] if isinstance(job_dirs, str) else list(job_dirs))
    limit = int(max_upload_mb * 2**20)
    # A thread semaphore, taken without blocking from the event loop: the check and the
    # take are one step, so no two requests can both see the last slot free.
    slots = threading.BoundedSemaphore(max_concurrent)
    app = FastAPI(title="CheXpert demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLog)
    app.state.panel = panel

    async def upload(request: Request, work):
        """Runs ``work(filename, data)`` in a worker thread on the request's uploaded file,
        holding a scoring slot from before the body is read until the answer is ready."""
        check_declared_size(request, limit, max_upload_mb)
        if not slots.acquire(blocking=False):
            raise HTTPException(503, f"the server is busy scoring {max_concurrent} other image(s); "
                                f"try again in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            filename, data = await read_file_field(request, limit, max_upload_mb, upload_timeout_s)
            # Decoding and the model run off the event loop, so other requests are answered
            # (or refused) meanwhile.
            return await run_in_threadpool(work, filename, data)
        finally:
            slots.release()

    def model_inputs(filename: str, data: bytes) -> dict[str, np.ndarray]:
        try:
            return panel.model_inputs(filename, data)
        except chexpert.RowError as e:
            raise HTTPException(400, f"{filename}: {MESSAGES.get(e.reason, e.reason)}") from None

    def error_response(request: Request, status: int, message: str, headers=None) -> JSONResponse:
        request.scope[AccessLog.ERROR_KEY] = message  # for the access log line
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    # Starlette's own class: the router's 404 and 405 answer in the same shape as ours.
    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(UploadError)
    def upload_error(request: Request, exc: UploadError):
        return error_response(request, exc.status, exc.message)

    @app.get("/")
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/api/info")
    def info():
        return {"tasks": list(panel.tasks), "threshold": panel.threshold, "thresholds": panel.thresholds,
                "image_size": panel.first.spec.image_size,
                "names": {t: chexpert.SLUG_TO_NAME[t] for t in panel.tasks},
                "jobs": panel.describe(), "combine": panel.combine()}

    def score(filename: str, data: bytes) -> dict:
        inputs = model_inputs(filename, data)
        probabilities, members = panel.score(inputs)
        view = views.view_of(filename, data)
        return {"file": filename, "threshold": panel.threshold, "thresholds": panel.thresholds,
                "probabilities": probabilities,
                "positive": [t for t, p in probabilities.items() if p >= panel.thresholds[t]],
                "members": members, "combine": panel.combine(), "view": view,
                # The first job's input: with several jobs their inputs may differ in size only.
                "image": _png_data_url(Image.fromarray(inputs[next(iter(panel.jobs))][..., 0])),
                "warnings": panel.warnings(view), "jobs": panel.describe()}

    @app.post("/api/predict")
    async def predict_upload(request: Request):
        return await upload(request, score)

    @app.post("/api/heatmap")
    async def heatmap(request: Request, observation: str = Query(...), job: str | None = Query(None)):
        name, chosen = panel.heatmap_job(observation, job)

        def explain(filename: str, data: bytes) -> dict:
            try:
                image = preprocess.model_input(data, filename, chosen.spec)
            except chexpert.RowError as e:
                raise HTTPException(400, f"{filename}: {MESSAGES.get(e.reason, e.reason)}") from None
            try:
                cam = gradcam.grad_cam(chosen, image, observation)
            except job_lib.JobError as e:
                raise HTTPException(400, f"{filename}: {e}") from None
            except Exception:  # a model Grad-CAM cannot walk: the traceback goes to the log, a message to the page
                log.exception("Grad-CAM of %s for %s failed", name, observation)
                raise HTTPException(500, f"{filename}: the Grad-CAM of job {name} for {observation} failed "
                                    "(the server log has the traceback)") from None
            return {"observation": observation, "job": name, "overlay": _png_data_url(heatmap_lib.overlay(image, cam))}

        return await upload(request, explain)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.max_concurrent < 1:
        parser.error(f"--max_concurrent={args.max_concurrent}: must be at least 1")
    if not args.upload_timeout_s > 0:
        parser.error(f"--upload_timeout_s={args.upload_timeout_s}: must be more than 0")
    job_dirs = args.job_dir or [DEFAULT_JOB]
    # The access log (webdemo.access) and the demo's own lines at INFO on stderr; everything
    # else (TensorFlow, uvicorn's internals) at WARNING as before.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("webdemo").setLevel(logging.INFO)
    try:
        app = create_app(job_dirs, max_upload_mb=args.max_upload_mb, max_concurrent=args.max_concurrent,
                         upload_timeout_s=args.upload_timeout_s)
    except ServeError as e:
        print(f"webdemo: error: {e}", file=sys.stderr)
        return 2
    except job_lib.JobError as e:
        # The hint only where there is no model at all; a damaged spec needs no retraining.
        missing = [d for d in job_dirs if not os.path.isdir(d)]
        hint = "\n(train one first, e.g. `make demo`)" if missing else ""
        print(f"webdemo: error: {e}{hint}", file=sys.stderr)
        return 2
    import uvicorn

    for job in app.state.panel.describe():
        print(f"{job['name']}: {', '.join(job['tasks'])}; {job['provenance']}")
        if job["synthetic"]:
            log.warning("%s was trained on SYNTHETIC data; the page says so next to every answer", job["name"])
    print(f"serving {', '.join(job_dirs)} on http://{args.host}:{args.port}")
    # Our AccessLog middleware writes the access lines (with the error message); uvicorn's
    # own would repeat them without it.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
