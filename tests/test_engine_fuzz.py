"""Schema-driven fuzzing of the annotation API (schemathesis, derandomised): no request may cause a 5xx, and
responses must match the OpenAPI schema the server publishes."""

from __future__ import annotations

import os

import pytest
import schemathesis
from engine_harness import PASSWORD, make_images
from hypothesis import HealthCheck, given, settings

from segany.engine import EngineSettings, create_app
from segany.engine.model import ModelSpec

EXAMPLES = int(os.environ.get("SEGANY_FUZZ_EXAMPLES", "12"))  # per operation; raise it for a longer hunt


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    make_images(root / "images")
    return create_app(EngineSettings(image_dir=root / "images", data_dir=root / "data",
                                     db_url=f"sqlite:///{root}/db.sqlite", admin_password=PASSWORD,
                                     model=ModelSpec(kind="tiny"), max_upload_bytes=100_000))  # fmt: skip


def test_no_server_errors(app) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="https://testserver")
    token = client.post(
        "/api/login", json={"username": "admin", "password": PASSWORD, "bearer": True}
    ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    skipped = ("/prefill", "/embedding", "/decoder.onnx")  # model work: slow on CPU, covered elsewhere
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith(skipped):
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:
            case.call_and_validate(headers=headers)

        check()
        ran += 1
    assert ran >= 15
