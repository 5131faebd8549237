"""The data-engine loop: accepted masks -> COCO training folder -> fine-tune -> click benchmark before/after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine_harness import PASSWORD, make_images, rect_rle
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils

from segany.data.mixed import open_source
from segany.engine import EngineSettings, create_app
from segany.engine.model import ModelSpec


def test_retrain_cycle(tmp_path: Path, capsys) -> None:
    sizes = [(120, 200), (96, 160), (128, 128)]
    make_images(tmp_path / "images", sizes)
    data_dir = tmp_path / "images" / ".segany"
    db = f"sqlite:///{data_dir}/annotations.db"
    data_dir.mkdir(parents=True)
    app = create_app(EngineSettings(image_dir=tmp_path / "images", data_dir=data_dir, db_url=db,
                                    admin_password=PASSWORD, model=ModelSpec(kind="tiny")))  # fmt: skip
    c = TestClient(app, base_url="https://testserver")
    c.headers["X-CSRF-Token"] = c.post("/api/login", json={"username": "admin", "password": PASSWORD}).json()[
        "csrf_token"
    ]
    for image_id, (h, w) in enumerate(sizes, start=1):
        for y0, x0 in [(h // 4, w // 4), (2, 2)]:
            body = {"rle": rect_rle(h, w, y0, y0 + h // 2, x0, x0 + w // 3), "label": "thing"}
            assert c.post(f"/api/images/{image_id}/annotations", json=body).status_code == 201
    deleted = c.post("/api/images/1/annotations", json={"rle": rect_rle(120, 200, 0, 5, 0, 5)}).json()
    c.delete(f"/api/annotations/{deleted['id']}?version=1")
    app.state.engine.dispose()

    from segany.cli import engine as engine_cli

    p = argparse.ArgumentParser()
    engine_cli.add_parser(p.add_subparsers())
    out = tmp_path / "cycle"
    args = p.parse_args(["engine", "retrain", str(tmp_path / "images"), "--model", "tiny", "--out", str(out),
                         "--steps", "1", "--points", "1", "--max-clicks", "2", "--eval-fraction", "0.34"])  # fmt: skip
    assert engine_cli.run(args) == 0
    assert '"change"' in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["n_train_images"] == 2 and report["n_eval_images"] == 1
    assert report["n_train_masks"] == 4  # the deleted mask is not trained on
    for phase in ("before", "after"):
        s = report[phase]["engine_heldout"]
        assert s["num_instances"] == 2 and 0.0 <= s["miou_1_auto"] <= 1.0
    assert set(report["change"]["engine_heldout"]) >= {"miou_1_auto", "noc_85", "noc_90"}
    assert Path(report["checkpoint"]).is_file()
    # The exported training folder is what segany.data reads, with the saved masks intact.
    source = open_source(out / "train", for_training=True)
    assert len(source) == 2
    coco = json.loads((out / "train" / "instances.json").read_text())
    areas = sorted(int(mask_utils.area(a["segmentation"])) for a in coco["annotations"])
    assert areas == sorted(a["area"] for a in coco["annotations"])
