r"""The web demo (the seed project's GUI): drop an X-ray, see the model's answer.

    python -m webdemo.app --job_dir jobs/atelectasis          # http://127.0.0.1:8000
    make gui

A FastAPI app with one static page. The page uploads the file; the server decodes it with
the records job's preprocessing, returns P(positive) per observation with the threshold, and
on request a Grad-CAM overlay. Requests carry image bytes only: no request names a path on
the server. Binds to 127.0.0.1 unless ``--host`` says otherwise.

Memory under load is bounded. An upload above ``--max_upload_mb`` is refused with 413 from
its Content-Length before its body is read, and a body without one (chunked) is read a
chunk at a time and refused as soon as it passes the limit: the server parses the form
itself and never holds or spools more than the limit plus one chunk. At most
``--max_concurrent`` requests read and score an image at once; one more gets 503 with
Retry-After at once, rather than queueing its upload in memory. A request costs at most
the upload limit plus one image's decode (``pipeline.imaging``: about 300 MB for the
largest image it accepts; BUILD_NOTES.md).
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import sys
import threading
from collections.abc import Sequence

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from schemas import chexpert
from trainer import inference, predict

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_JOB = "jobs/atelectasis"
# Room for the form around the file (boundaries, part headers, a browser's extra fields):
# the body limit is the upload limit plus this, so a file of exactly the limit is accepted.
FORM_OVERHEAD = 64 * 1024
RETRY_AFTER_S = 1  # scoring one image takes ~0.1 s on 2 cores: a second frees a slot
# Reasons of pipeline.imaging (RowError.reason) as the page shows them after the file name.
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


async def read_file_field(request: Request, limit: int, max_upload_mb: float) -> tuple[str, bytes]:
    """Reads the ``file`` field of a multipart/form-data request, never holding more than
    ``limit`` bytes of it (plus one chunk of the body).

    The body is taken from the request stream chunk by chunk and fed to the parser; the
    whole body may be ``limit + FORM_OVERHEAD`` bytes at most. ``check_declared_size``
    should have refused a too-large Content-Length before this is called.

    Returns:
        (file name, file bytes).

    Raises:
        UploadError: 413 when the file or the body passes its limit, 422 when the request
            has no ``file`` field, 400 when the form is malformed or ends early.
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
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise UploadError(413, f"{field.filename}: larger than the {max_upload_mb:g} MB upload limit")
            field.parser.write(chunk)
            if field.too_large:
                raise UploadError(413, f"{field.filename}: larger than the {max_upload_mb:g} MB upload limit")
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


def create_app(job_dir: str, *, max_upload_mb: float = 20.0, max_concurrent: int = 2) -> FastAPI:
    """Builds the app around one trained job (loaded once).

    Args:
        job_dir: a trainer.task job folder or its SavedModel export.
        max_upload_mb: the largest accepted file, MiB.
        max_concurrent: requests that may read and score an image at the same time; the
            next gets 503 with Retry-After.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent={max_concurrent}: at least one request must be served")
    job = inference.load_job(job_dir)
    limit = int(max_upload_mb * 2**20)
    # A thread semaphore, taken without blocking from the event loop: the check and the
    # take are one step, so no two requests can both see the last slot free.
    slots = threading.BoundedSemaphore(max_concurrent)
    app = FastAPI(title="CheXpert demo", docs_url=None, redoc_url=None, openapi_url=None)

    async def upload(request: Request, work):
        """Runs ``work(filename, data)`` in a worker thread on the request's uploaded file,
        holding a scoring slot from before the body is read until the answer is ready."""
        check_declared_size(request, limit, max_upload_mb)
        if not slots.acquire(blocking=False):
            raise HTTPException(503, f"the server is busy scoring {max_concurrent} other image(s); "
                                f"try again in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            filename, data = await read_file_field(request, limit, max_upload_mb)
            # Decoding and the model run off the event loop, so other requests are answered
            # (or refused) meanwhile.
            return await run_in_threadpool(work, filename, data)
        finally:
            slots.release()

    def model_input(filename: str, data: bytes) -> np.ndarray:
        try:
            return inference.model_input(data, filename, job.cfg)
        except chexpert.RowError as e:
            raise HTTPException(400, f"{filename}: {MESSAGES.get(e.reason, e.reason)}") from None

    @app.exception_handler(HTTPException)
    def http_error(request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UploadError)
    def upload_error(request, exc: UploadError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/")
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/api/info")
    def info():
        return {"tasks": list(job.tasks), "threshold": job.cfg.threshold, "image_size": job.cfg.image_size,
                "names": {t: chexpert.SLUG_TO_NAME[t] for t in job.tasks}}

    def score(filename: str, data: bytes) -> dict:
        image = model_input(filename, data)
        probs = inference.predict_batch(job, image[None])[0]
        warnings = []
        if job.cfg.views == "frontal" and inference.is_lateral(filename, data):
            warnings.append("This looks like a lateral view; the model was trained on frontal views.")
        return {"file": filename, "threshold": job.cfg.threshold,
                "probabilities": {t: float(p) for t, p in zip(job.tasks, probs)},
                "positive": [t for t, p in zip(job.tasks, probs) if p >= job.cfg.threshold],
                "image": _png_data_url(Image.fromarray(image[..., 0])), "warnings": warnings}

    @app.post("/api/predict")
    async def predict_upload(request: Request):
        return await upload(request, score)

    @app.post("/api/heatmap")
    async def heatmap(request: Request, observation: str = Query(...)):
        if observation not in job.tasks:
            raise HTTPException(400, f"unknown observation {observation!r}; the model predicts {', '.join(job.tasks)}")

        def explain(filename: str, data: bytes) -> dict:
            image = model_input(filename, data)
            try:
                cam = predict.grad_cam(job, image, observation)
            except inference.JobError as e:
                raise HTTPException(400, f"{filename}: {e}") from None
            return {"observation": observation, "overlay": _png_data_url(predict.overlay(image, cam))}

        return await upload(request, explain)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job_dir", default=DEFAULT_JOB, help="A trainer.task job folder (default: make demo's).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind; 0.0.0.0 exposes it to the network.")
    parser.add_argument("--port", type=int, default=8000, help="Port.")
    parser.add_argument("--max_upload_mb", type=float, default=20.0,
                        help="Largest accepted upload in MiB; larger ones get 413 before their body is read.")
    parser.add_argument("--max_concurrent", type=int, default=2,
                        help="Requests scored at once (each holds up to one upload and one decoded image); "
                             "more get 503 with Retry-After. Default 2, one per core here.")
    args = parser.parse_args(argv)
    if args.max_concurrent < 1:
        parser.error(f"--max_concurrent={args.max_concurrent}: must be at least 1")
    try:
        app = create_app(args.job_dir, max_upload_mb=args.max_upload_mb, max_concurrent=args.max_concurrent)
    except inference.JobError as e:
        print(f"webdemo: error: {e}\n(train one first, e.g. `make demo`)", file=sys.stderr)
        return 2
    import uvicorn

    print(f"serving {args.job_dir} on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
