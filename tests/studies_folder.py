"""A folder of CheXpert-style studies built from the synthetic sample, for the study-level
outputs of ``trainer.predict`` and ``pipeline.score``.

    patient00001..patient00004/study1/view1_frontal.jpg   four patients, one frontal each,
                                                          all with the same file name
    patient00005/study1/view1_frontal.jpg                 a study with two frontals
    patient00005/study1/view2_frontal.jpg                 (different images) and a lateral
    patient00005/study1/view3_lateral.jpg
    patient00006/study1/view1_lateral.jpg                 a study with a lateral only
    loose/scan.jpg                                        in no study folder
"""

from __future__ import annotations

import os
import shutil

from pipeline import make_sample

SAME_NAME_FRONTALS = [f"patient{i:05d}/study1/view1_frontal.jpg" for i in range(1, 5)]
TWO_FRONTALS = ["patient00005/study1/view1_frontal.jpg", "patient00005/study1/view2_frontal.jpg"]
ITS_LATERAL = "patient00005/study1/view3_lateral.jpg"
LATERAL_ONLY = "patient00006/study1/view1_lateral.jpg"
LOOSE = "loose/scan.jpg"
ALL = SAME_NAME_FRONTALS + TWO_FRONTALS + [ITS_LATERAL, LATERAL_ONLY, LOOSE]


def build(sample_dir: str, folder: str) -> str:
    """Copies sample images into ``folder`` in the layout above; returns ``folder``."""
    valid = os.path.join(sample_dir, make_sample.DATASET_DIR, "valid")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(valid) for f in fs)
    frontals = [f for f in files if f.endswith("_frontal.jpg")]
    laterals = [f for f in files if f.endswith("_lateral.jpg")]
    sources = dict(zip(SAME_NAME_FRONTALS + TWO_FRONTALS + [LOOSE], frontals))
    sources.update(zip([ITS_LATERAL, LATERAL_ONLY], laterals))
    for rel, src in sources.items():
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        shutil.copy(src, os.path.join(folder, rel))
    return folder
