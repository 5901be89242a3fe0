"""trainer.evaluate's arithmetic on made-up predictions: study max, ensemble mean, TTA mean.

No trained job: the model is a stub, so each test runs in well under a second and a break
of the rule shows as a wrong number, not as an AUROC that happens to stay put.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from trainer import evaluate

STUDY = "CheXpert-v1.0-small/valid/patient00001/study1"


def _pred(study: str, atelectasis: float, code: int = 1, dataset: str = "chexpert") -> dict:
    return {"study": study, "dataset": dataset, "raw": {"atelectasis": code}, "probs": {"atelectasis": atelectasis}}


def test_a_study_scores_the_max_of_its_images():
    preds = {f"{STUDY}/view1_frontal.jpg": _pred(STUDY, 0.2), f"{STUDY}/view2_frontal.jpg": _pred(STUDY, 0.7),
             f"{STUDY}/view3_frontal.jpg": _pred(STUDY, 0.4),
             "CheXpert-v1.0-small/valid/patient00002/study1/view1_frontal.jpg": _pred("p2", 0.3, code=0),
             "CheXpert-v1.0-small/valid/patient00003/study1/view1_frontal.jpg": _pred("p3", 0.9, code=-1)}
    y, p = evaluate.aggregate(preds, ["atelectasis"], "study")["atelectasis"]
    # Three frontals of one study: their max; the uncertain study is left out.
    assert sorted(zip(y.tolist(), p.tolist())) == [(0, 0.3), (1, 0.7)]
    y, p = evaluate.aggregate(preds, ["atelectasis"], "image")["atelectasis"]
    assert sorted(p.tolist()) == [0.2, 0.3, 0.4, 0.7]


def test_an_ensemble_is_the_mean_of_its_members():
    a = {"x.jpg": _pred(STUDY, 0.2), "y.jpg": _pred(STUDY, 0.9), "only_a.jpg": _pred(STUDY, 0.5)}
    b = {"x.jpg": _pred(STUDY, 0.6), "y.jpg": _pred(STUDY, 0.1)}
    tasks, merged = evaluate.ensemble([a, b])
    assert tasks == ["atelectasis"] and sorted(merged) == ["x.jpg", "y.jpg"]  # images every member scored
    assert merged["x.jpg"]["probs"]["atelectasis"] == pytest.approx(0.4)
    assert merged["y.jpg"]["probs"]["atelectasis"] == pytest.approx(0.5)
    # The mean's order differs from either member's: no monotone change of one member gives it.
    _, swapped = evaluate.ensemble([b, a])
    assert swapped == merged


def test_tta_is_the_mean_over_its_transforms(monkeypatch):
    import tensorflow as tf

    from serving import preprocess

    size = 32
    seen = []

    def stub(job, images):  # a "model": the mean gray level of the left half, per image
        images = np.asarray(images)
        seen.append(images)
        return images[:, :, : size // 2, 0].mean(axis=(1, 2))[:, None].astype(np.float32) / 255

    monkeypatch.setattr(evaluate, "predict_batch", stub)
    job = types.SimpleNamespace(spec=types.SimpleNamespace(image_size=size))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, size, size, 1), dtype=np.uint8)
    images[:, :, : size // 2] //= 4  # a darker left half: a shift changes what the stub sees

    plain = evaluate._predict_images(job, images, tta=False)
    np.testing.assert_array_equal(plain, stub(job, images))
    seen.clear()
    tta = evaluate._predict_images(job, images, tta=True)
    calls = list(seen)
    transforms = evaluate._tta_transforms(size)
    assert len(calls) == len(transforms) == 4
    want = np.mean([stub(job, preprocess.to_pixels(preprocess.transform(
        tf.cast(images, tf.float32), tf.tile(t[None], [3, 1])))) for t in transforms], axis=0)
    np.testing.assert_allclose(tta, want, rtol=1e-6)
    assert np.abs(tta - plain).max() > 1e-3
    # The first transform is the identity; the others move the image.
    np.testing.assert_array_equal(calls[0], images)
    assert all(not np.array_equal(c, images) for c in calls[1:])
    # What the report says they are: shifts of 3% of the side either way, a 1.05 zoom about
    # the centre (each row maps an output pixel (x, y) to the input pixel it samples).
    def sampled(t, x, y):
        return (t[0] * x + t[1] * y + t[2], t[3] * x + t[4] * y + t[5])

    t = evaluate._tta_transforms(200)
    c = 199 / 2
    assert sampled(t[0], 10, 20) == (10, 20)
    assert sorted([sampled(t[1], 10, 20)[0] - 10, sampled(t[2], 10, 20)[0] - 10]) == pytest.approx([-6, 6])
    assert sampled(t[1], 10, 20)[1] == sampled(t[2], 10, 20)[1] == 20
    np.testing.assert_allclose(sampled(t[3], c, c), (c, c), atol=1e-4)
    np.testing.assert_allclose(sampled(t[3], c + 105, c - 21), (c + 100, c - 20), atol=1e-3)
