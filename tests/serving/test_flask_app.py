"""The Flask app through app.test_client(): TensorFlow Serving's REST API, every client error, hot version swaps."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time

import numpy as np
import pytest

from experiment import artifacts
from serving.flask_app import create_app
from tests import torch_exports

IMAGE = [[float((row * 8 + column) % 17) for column in range(8)] for row in range(8)]  # one (8, 8) image


def publish(export_path, base_path, version: int) -> None:
    """Copy an export into base_path/<version> the way the pipelines publish: a hidden folder, then one rename."""
    staging = base_path / f".staging-{version}"
    shutil.copytree(export_path, staging)
    os.rename(staging, base_path / str(version))


@pytest.fixture
def base_path(tmp_path, torch_smoke_run):
    """A model base path holding version 1 (a copy of the smoke run's export)."""
    path = tmp_path / "digits"
    path.mkdir()
    publish(torch_smoke_run.export_path, path, 1)
    return path


@pytest.fixture
def app(base_path):
    """A fresh app per test, polling off (tests call poll_once themselves)."""
    application = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "TESTING": True})
    yield application
    application.extensions["model_manager"].stop()


@pytest.fixture
def client(app):
    return app.test_client()


def predict(client, body, path="/v1/models/digits:predict"):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def in_process(export_path, images):
    return torch_exports.onnx_outputs(export_path, images)


# --- predictions ------------------------------------------------------------------------------------------------


def test_row_format_matches_the_torchscript_model(client, digits, torch_smoke_run):
    images = digits.test.images[:5]
    response = predict(client, {"instances": images.tolist()})
    assert response.status_code == 200
    assert response.content_type == "application/json"
    rows = response.get_json()["predictions"]
    expected_probabilities, expected_classes = in_process(torch_smoke_run.export_path, images)
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected_probabilities, rtol=1e-5, atol=1e-6)
    assert [row["classes"] for row in rows] == expected_classes.tolist()


@pytest.mark.parametrize(
    "body",
    [{"inputs": {"images": [IMAGE, IMAGE]}}, {"inputs": [IMAGE, IMAGE]}],
    ids=["named", "bare"],
)
def test_columnar_format(client, body):
    response = predict(client, body)
    assert response.status_code == 200
    outputs = response.get_json()["outputs"]
    assert np.asarray(outputs["probabilities"]).shape == (2, 10)
    assert len(outputs["classes"]) == 2 and all(isinstance(value, int) for value in outputs["classes"])


def test_row_format_with_named_instances_and_integer_pixels(client):
    integer_image = [[int(value) for value in row] for row in IMAGE]
    response = predict(client, {"instances": [{"images": integer_image}], "signature_name": "serving_default"})
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 1


def test_versioned_predict(client):
    assert predict(client, {"instances": [IMAGE]}, "/v1/models/digits/versions/1:predict").status_code == 200


# --- client errors: one sentence, the right status, never a 500 -------------------------------------------------

BAD_BODIES = {
    "malformed_json": ('{"instances": [', 400),
    "not_utf8": (b"\xff\xfe\x00", 400),
    "empty_body": ("", 400),
    "not_an_object": ("[1, 2, 3]", 400),
    "missing_key": ({"examples": [IMAGE]}, 400),
    "both_keys": ({"instances": [IMAGE], "inputs": [IMAGE]}, 400),
    "instances_not_a_list": ({"instances": 3}, 400),
    "wrong_shape": ({"instances": [[1.0, 2.0, 3.0]]}, 400),
    "wrong_image_size": ({"instances": [[[0.0] * 7] * 8]}, 400),
    "ragged": ({"instances": [IMAGE, IMAGE[:4]]}, 400),
    "strings": ({"instances": [[["a"] * 8] * 8]}, 400),
    "booleans": ({"instances": [[[True] * 8] * 8]}, 400),
    "null": ({"instances": [None]}, 400),
    "nan": ('{"instances": [' + json.dumps(IMAGE).replace("0.0", "NaN", 1) + "]}", 400),
    "infinity": ('{"inputs": [' + json.dumps(IMAGE).replace("0.0", "-Infinity", 1) + "]}", 400),
    "beyond_float32": ({"instances": [[[1e39] * 8] * 8]}, 400),
    "empty_instances": ({"instances": []}, 400),
    "empty_inputs": ({"inputs": []}, 400),
    "unknown_input_name": ({"inputs": {"pixels": [IMAGE]}}, 400),
    "mixed_instances": ({"instances": [{"images": IMAGE}, IMAGE]}, 400),
    "unknown_signature": ({"instances": [IMAGE], "signature_name": "classify"}, 400),
    "batch_over_limit": ({"instances": [IMAGE] * 5}, 400),
}


@pytest.mark.parametrize("body, status", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_client_mistakes_get_one_sentence_and_a_4xx(base_path, body, status):
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "MAX_BATCH_SIZE": 4})
    response = predict(app.test_client(), body)
    assert response.status_code == status
    assert response.content_type == "application/json"
    error = response.get_json()["error"]
    assert isinstance(error, str) and error.endswith(".") and "Traceback" not in error and "\n" not in error


def test_body_over_the_size_limit_is_413(base_path):
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "MAX_CONTENT_LENGTH": 1000})
    response = predict(app.test_client(), {"instances": [IMAGE] * 10})
    assert response.status_code == 413
    assert "1000 bytes" in response.get_json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/unknown:predict",
        "/v1/models/digits/versions/7:predict",
    ],
)
def test_unknown_model_or_version_is_404(client, path):
    response = predict(client, {"instances": [IMAGE]}, path)
    assert response.status_code == 404
    assert response.get_json()["error"]


@pytest.mark.parametrize("path", ["/v1/models/unknown", "/v1/models/digits/versions/7", "/v1/models/unknown/metadata"])
def test_unknown_model_status_and_metadata_are_404(client, path):
    assert client.get(path).status_code == 404


def test_unknown_path_and_wrong_method_answer_json(client):
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.get_json()
    wrong_method = client.get("/v1/models/digits:predict")
    assert wrong_method.status_code == 405
    assert "POST" in wrong_method.get_json()["error"]
    assert client.delete("/v1/models/digits").status_code == 405


# --- status, metadata, health, readiness, metrics ---------------------------------------------------------------


def test_model_status_is_tensorflow_servings(client):
    response = client.get("/v1/models/digits")
    assert response.status_code == 200
    assert response.get_json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def test_metadata_names_shapes_and_dtypes(client):
    document = client.get("/v1/models/digits/metadata").get_json()
    assert document["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    images = signature["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT"
    assert [dim["size"] for dim in images["tensor_shape"]["dim"]] == ["-1", "8", "8"]
    assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert [dim["size"] for dim in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert signature["outputs"]["classes"]["dtype"] == "DT_INT64"


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "alive"}
    assert client.get("/readyz").get_json() == {"status": "ready", "model": "digits", "version": 1, "format": "onnx"}


def test_not_ready_until_a_version_appears(tmp_path, torch_smoke_run):
    base_path = tmp_path / "empty"
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and "make train-torch" in not_ready.get_json()["error"]
    assert predict(client, {"instances": [IMAGE]}).status_code == 503
    assert client.get("/v1/models/digits").status_code == 503
    base_path.mkdir()
    publish(torch_smoke_run.export_path, base_path, 1)
    app.extensions["model_manager"].poll_once()
    assert client.get("/readyz").status_code == 200
    assert predict(client, {"instances": [IMAGE]}).status_code == 200


def test_metrics_count_requests_by_endpoint_and_status(client):
    predict(client, {"instances": [IMAGE]})
    predict(client, "{oops")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'flask_http_requests_total{endpoint="api.predict",method="POST",status="200"} 1.0' in text
    assert 'flask_http_requests_total{endpoint="api.predict",method="POST",status="400"} 1.0' in text
    assert 'flask_http_request_duration_seconds_count{endpoint="api.predict"} 2.0' in text
    assert 'flask_model_version_loaded{model="digits"} 1.0' in text


def test_metrics_count_requests_no_route_matched(client):
    assert client.get("/v1/nowhere").status_code == 404
    assert client.delete("/v1/models/digits:predict").status_code == 405
    text = client.get("/metrics").get_data(as_text=True)
    assert 'flask_http_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in text
    assert 'flask_http_requests_total{endpoint="unmatched",method="DELETE",status="405"} 1.0' in text


# --- versions ---------------------------------------------------------------------------------------------------


def test_new_version_is_served_after_a_poll(app, client, base_path, torch_smoke_run):
    publish(torch_smoke_run.export_path, base_path, 2)
    app.extensions["model_manager"].poll_once()
    assert client.get("/v1/models/digits").get_json()["model_version_status"][0]["version"] == "2"
    assert predict(client, {"instances": [IMAGE]}, "/v1/models/digits/versions/2:predict").status_code == 200
    assert predict(client, {"instances": [IMAGE]}, "/v1/models/digits/versions/1:predict").status_code == 404
    assert 'flask_model_version_loaded{model="digits"} 2.0' in client.get("/metrics").get_data(as_text=True)


def test_pinned_version_stays(base_path, torch_smoke_run):
    publish(torch_smoke_run.export_path, base_path, 2)
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "MODEL_VERSION": 1})
    app.extensions["model_manager"].poll_once()
    assert app.test_client().get("/readyz").get_json()["version"] == 1


def test_a_broken_new_version_keeps_the_old_one_serving(app, client, base_path):
    broken = base_path / "2"
    broken.mkdir()
    (broken / artifacts.ONNX_FILE).write_bytes(b"not a model")
    (broken / artifacts.METADATA_FILE).write_text("{}")
    app.extensions["model_manager"].poll_once()
    assert client.get("/readyz").get_json()["version"] == 1
    assert predict(client, {"instances": [IMAGE]}).status_code == 200


def test_swapping_versions_under_load_fails_no_request(base_path, torch_smoke_run):
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0.05})
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        client = app.test_client()
        while not stop.is_set():
            statuses.append(predict(client, {"instances": [IMAGE, IMAGE]}).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in (2, 3):
            publish(torch_smoke_run.export_path, base_path, version)
            deadline = time.monotonic() + 30
            while app.extensions["model_manager"].current.version != version and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        app.extensions["model_manager"].stop()
    assert app.extensions["model_manager"].current.version == 3
    assert statuses and set(statuses) == {200}


# --- configuration ----------------------------------------------------------------------------------------------


def test_configuration_from_prefixed_environment(monkeypatch, base_path):
    monkeypatch.setenv("FLASK_MODEL_BASE_PATH", str(base_path))
    monkeypatch.setenv("FLASK_MODEL_POLL_SECONDS", "0")
    monkeypatch.setenv("FLASK_MAX_BATCH_SIZE", "2")
    app = create_app()
    assert app.config["MAX_BATCH_SIZE"] == 2
    assert predict(app.test_client(), {"instances": [IMAGE] * 3}).status_code == 400


@pytest.mark.parametrize("setting", [{"MODEL_VERSION": "latest"}, {"MODEL_VERSION": 0}, {"MAX_BATCH_SIZE": 0}])
def test_impossible_settings_are_refused_in_one_sentence(base_path, setting):
    with pytest.raises(ValueError, match="FLASK_"):
        create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, **setting})


def test_probabilities_are_finite_json_numbers(client):
    rows = predict(client, {"instances": [IMAGE]}).get_json()["predictions"]
    assert all(isinstance(value, float) and math.isfinite(value) for value in rows[0]["probabilities"])


# --- formats ----------------------------------------------------------------------------------------------------


def test_the_onnx_path_never_imports_torch(base_path):
    """A Flask worker serving model.onnx loads and answers without torch (the Flask image has none)."""
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from serving.flask_app import create_app\n"
        f"app = create_app({{'MODEL_BASE_PATH': {str(base_path)!r}, 'MODEL_POLL_SECONDS': 0}})\n"
        "answer = app.test_client().post('/v1/models/digits:predict', json={'instances': [[[0.0] * 8] * 8]})\n"
        "app.extensions['model_manager'].stop()\n"
        "print(json.dumps([answer.status_code, app.test_client().get('/readyz').get_json()['format'],\n"
        "                  sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'tensorflow'))]))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.splitlines()[-1]) == [200, "onnx", []]


def test_an_unknown_format_is_refused_in_one_sentence(base_path):
    with pytest.raises(ValueError, match=r"^FLASK_MODEL_FORMAT must be one of onnx, pt2, torchscript, got 'keras'\.$"):
        create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "MODEL_FORMAT": "keras"})


def test_a_format_the_version_lacks_is_a_load_failure_that_says_so(base_path):
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "MODEL_FORMAT": "pt2"})
    try:
        not_ready = app.test_client().get("/readyz")
        assert not_ready.status_code == 503
        assert "model.pt2 is missing" in not_ready.get_json()["error"]
    finally:
        app.extensions["model_manager"].stop()


# --- the benchmark's app ----------------------------------------------------------------------------------------


def test_the_benchmark_app_answers_its_floors_and_still_predicts(monkeypatch, base_path):
    """benchmarks.floors' two floors on the Flask server: the fixed answer never reaches Flask, the no-op route does."""
    from benchmarks import serving_torch

    monkeypatch.setenv("FLASK_MODEL_BASE_PATH", str(base_path))
    monkeypatch.setenv("FLASK_MODEL_POLL_SECONDS", "0")
    app = serving_torch.create_benchmark_app()
    seen: list[str] = []
    app.before_request(lambda: seen.append(app.name) and None)
    try:
        client = app.test_client()
        fixed = client.post(serving_torch.FIXED_ANSWER_PATH, data=b'{"instances": [1]}')
        assert (fixed.status_code, fixed.data, seen) == (200, b"{}", [])
        noop = client.post(serving_torch.NOOP_PATH, data=b"{}")
        assert (noop.status_code, noop.data, len(seen)) == (200, b"{}", 1)
        assert len(predict(client, {"instances": [IMAGE]}).get_json()["predictions"]) == 1
    finally:
        app.extensions["model_manager"].stop()
