r"""The web demo (the seed project's GUI): drop an X-ray, see the model's answer.

    python -m webdemo.app --job_dir jobs/atelectasis          # http://127.0.0.1:8000
    make gui

A FastAPI app with one static page. The page uploads the file; the server decodes it with
the records job's preprocessing, returns P(positive) per observation with the threshold, and
on request a Grad-CAM overlay. Requests carry image bytes only: no request names a path on
the server. Uploads above ``--max_upload_mb`` are refused. Binds to 127.0.0.1 unless
``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import sys
from typing import Sequence

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from schemas import chexpert
from trainer import inference, predict

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_JOB = "jobs/atelectasis"
log = logging.getLogger("webdemo")


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def create_app(job_dir: str, *, max_upload_mb: float = 20.0) -> FastAPI:
    """Builds the app around one trained job (loaded once)."""
    job = inference.load_job(job_dir)
    limit = int(max_upload_mb * 2**20)
    app = FastAPI(title="CheXpert demo", docs_url=None, redoc_url=None, openapi_url=None)

    def read_upload(file: UploadFile) -> tuple[bytes, np.ndarray]:
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{file.filename}: larger than the {max_upload_mb:g} MB upload limit")
        try:
            return data, inference.model_input(data, file.filename or "upload", job.cfg)
        except chexpert.RowError as e:
            messages = {"empty_file": "the file is empty", "not_an_image": "this is not an image we can read "
                        "(JPEG, PNG or DICOM)", "truncated_image": "the image file is truncated",
                        "image_too_large": "the image has too many pixels", "dicom_unreadable": "the DICOM file "
                        "cannot be decoded (compressed transfer syntax or damaged)"}
            raise HTTPException(400, f"{file.filename}: {messages.get(e.reason, e.reason)}") from None

    @app.exception_handler(HTTPException)
    def http_error(request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/")
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/api/info")
    def info():
        return {"tasks": list(job.tasks), "threshold": job.cfg.threshold, "image_size": job.cfg.image_size,
                "names": {t: chexpert.SLUG_TO_NAME[t] for t in job.tasks}}

    @app.post("/api/predict")
    def predict_upload(file: UploadFile = File(...)):
        data, image = read_upload(file)
        probs = inference.predict_batch(job, image[None])[0]
        warnings = []
        if job.cfg.views == "frontal" and inference.is_lateral(file.filename or "", data):
            warnings.append("This looks like a lateral view; the model was trained on frontal views.")
        return {"file": file.filename, "threshold": job.cfg.threshold,
                "probabilities": {t: float(p) for t, p in zip(job.tasks, probs)},
                "positive": [t for t, p in zip(job.tasks, probs) if p >= job.cfg.threshold],
                "image": _png_data_url(Image.fromarray(image[..., 0])), "warnings": warnings}

    @app.post("/api/heatmap")
    def heatmap(observation: str = Query(...), file: UploadFile = File(...)):
        if observation not in job.tasks:
            raise HTTPException(400, f"unknown observation {observation!r}; the model predicts {', '.join(job.tasks)}")
        _, image = read_upload(file)
        try:
            cam = predict.grad_cam(job, image, observation)
        except inference.JobError as e:
            raise HTTPException(400, str(e)) from None
        return {"observation": observation, "overlay": _png_data_url(predict.overlay(image, cam))}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job_dir", default=DEFAULT_JOB, help="A trainer.task job folder (default: make demo's).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind; 0.0.0.0 exposes it to the network.")
    parser.add_argument("--port", type=int, default=8000, help="Port.")
    parser.add_argument("--max_upload_mb", type=float, default=20.0, help="Largest accepted upload.")
    args = parser.parse_args(argv)
    try:
        app = create_app(args.job_dir, max_upload_mb=args.max_upload_mb)
    except inference.JobError as e:
        print(f"webdemo: error: {e}\n(train one first, e.g. `make demo`)", file=sys.stderr)
        return 2
    import uvicorn

    print(f"serving {args.job_dir} on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
