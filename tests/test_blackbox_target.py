"""Query targets and the label-detection wire format: what an attacker who can only query sees.

Real model (``signs``), real PNG/JPEG files and a real HTTP server on 127.0.0.1 (stdlib, a
thread, port 0) that answers Cloud-Vision-shaped JSON, garbage, 429 or 500 as a test asks.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from physical_adv.blackbox.protocol import (
    Label,
    ProtocolError,
    decode_image,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    png_bytes,
)
from physical_adv.blackbox.target import MODEL_BATCH, BudgetExhausted, HttpTarget, ModelTarget, endpoint_url, open_target
from physical_adv.errors import UserError
from physical_adv.images import load_image, to_batch

KEY_ENV = "PHYSICAL_ADV_TEST_KEY"


@pytest.fixture(scope="module")
def signs_images() -> torch.Tensor:
    """Four clean sign renders at 64 px, (4, 3, 64, 64) in [0, 1]."""
    return to_batch([load_image(f"sign:{name}") for name in ("stop", "yield", "no entry", "speed limit 50")], size=64)


@pytest.fixture(scope="module")
def scores_target() -> ModelTarget:
    return ModelTarget("signs", "scores", top_k=5)


# ---------------------------------------------------------------- ModelTarget


def test_model_target_counts_every_image_over_several_calls(signs_images):
    target = ModelTarget("signs", "label", top_k=1)
    for n in (3, 1, 4, 2):
        target.query(signs_images[:n])
    assert target.queries == 10
    assert target.remaining is None
    assert target.describe()["queries"] == 10


def test_budget_refuses_a_batch_that_would_pass_it_before_answering_any(signs_images):
    target = ModelTarget("signs", "scores", top_k=3, budget=6)
    target.query(signs_images)  # 4 used
    with pytest.raises(BudgetExhausted) as exc:
        target.query(signs_images[:3])  # 7 > 6
    assert (exc.value.used, exc.value.budget) == (4, 6)
    assert target.queries == 4 and target.remaining == 2
    assert len(target.query(signs_images[:2])) == 2  # a smaller batch still fits
    assert target.remaining == 0
    with pytest.raises(BudgetExhausted):
        target.query(signs_images[:1])
    assert target.queries == 6


def test_scores_mode_answers_the_models_top_k_probabilities(scores_target, signs_model, signs_images):
    answers = scores_target.query(signs_images)
    probs = signs_model(signs_images).softmax(dim=1)
    top = probs.topk(5, dim=1)
    for row, values, indices in zip(answers, top.values, top.indices):
        assert [label.description for label in row] == [signs_model.class_names[i] for i in indices]
        assert [label.score for label in row] == pytest.approx(values.tolist(), abs=1e-6)
        assert all(type(label.score) is float for label in row)
    assert answers[0][0].description == "stop"  # a clean stop sign is read as one


def test_labels_mode_answers_k_names_without_scores(scores_target, signs_images):
    target = ModelTarget("signs", "labels", top_k=4)
    answers = target.query(signs_images)
    with_scores = scores_target.query(signs_images)
    for row, full in zip(answers, with_scores):
        assert len(row) == 4
        assert all(label.score is None for label in row)
        assert [label.description for label in row] == [label.description for label in full[:4]]


def test_label_mode_answers_only_the_top_name(signs_images):
    answers = ModelTarget("signs", "label", top_k=5).query(signs_images)
    assert [[(label.description, label.score) for label in row] for row in answers] == [
        [("stop", None)], [("yield", None)], [("no entry", None)], [("speed limit 50", None)]
    ]


def test_model_target_leaks_no_gradient(scores_target, signs_images):
    images = signs_images.clone().requires_grad_(True)
    with torch.enable_grad():
        answers = scores_target.query(images)
    assert images.grad is None
    assert all(type(label.score) is float and type(label.description) is str for row in answers for label in row)
    assert not any(p.requires_grad for p in scores_target._model.parameters())


def test_model_target_batches_past_its_batch_size_with_the_same_answers(signs_images):
    target = ModelTarget("signs", "scores", top_k=2)
    noise = torch.rand(MODEL_BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = torch.cat([signs_images, noise])
    whole = target.query(batch)
    assert len(whole) == MODEL_BATCH + 4 and target.queries == MODEL_BATCH + 4
    pieces = [row for chunk in batch.split(100) for row in target.query(chunk)]
    assert [[label.description for label in row] for row in whole] == [[label.description for label in row] for row in pieces]
    assert [label.score for row in whole for label in row] == pytest.approx([label.score for row in pieces for label in row], abs=1e-5)


def test_model_target_knows_its_class_names(scores_target, signs_model):
    assert scores_target.class_names == tuple(signs_model.class_names)
    assert scores_target.describe() == {"kind": "model", "spec": "signs", "mode": "scores", "top_k": 5,
                                        "budget": None, "queries": scores_target.queries}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"mode": "probs"}, "unknown mode"),
    ({"top_k": 0}, "top-k"),
    ({"top_k": True}, "top-k"),
    ({"budget": 0}, "budget"),
    ({"budget": -5}, "budget"),
    ({"top_k": 15}, "more than the 14 classes"),
])
def test_open_target_refuses_bad_settings_in_one_sentence(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        open_target("signs", **kwargs)


def test_open_target_sends_urls_to_http_and_specs_to_models():
    assert isinstance(open_target("http://127.0.0.1:1/", "labels", 3), HttpTarget)
    assert isinstance(open_target("HTTPS://vision.example/v1/images:annotate"), HttpTarget)
    assert isinstance(open_target("signs", "label"), ModelTarget)
    with pytest.raises(UserError, match="unknown model"):
        open_target("no such model")


def test_query_refuses_a_tensor_that_is_not_a_batch_of_rgb_images(scores_target):
    for bad in (torch.rand(3, 64, 64), torch.rand(2, 1, 64, 64), torch.zeros(2, 3, 8, 8, dtype=torch.uint8)):
        with pytest.raises(ValueError):
            scores_target.query(bad)


# ---------------------------------------------------------------- images


def test_png_codec_is_lossless_after_8_bit_quantisation():
    image = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(1))
    image[0, 0, 0], image[1, 0, 0] = -0.5, 1.7  # clamped
    rgb = decode_image(png_bytes(image))
    assert rgb.shape == (17, 23, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy())


def test_decode_image_reads_jpeg_as_rgb():
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = 250  # red
    ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = decode_image(jpeg.tobytes())
    assert decoded.shape == (16, 24, 3)
    assert abs(int(decoded[..., 0].mean()) - 250) <= 3 and decoded[..., 2].mean() < 5


@pytest.mark.parametrize("data, code", [
    (b"GIF89a\x01\x00\x01\x00", 400),
    (b"not an image at all", 400),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 4, 400),  # truncated PNG header
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 10, 10) + b"\x08\x02\x00\x00\x00garbage", 400),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 100_000, 100_000) + b"\x08\x02\x00\x00\x00", 413),
    (b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60_000, 60_000) + b"\x03", 413),
    (b"\xff\xd8\xff\xe0\x00\x01", 400),  # a segment length below 2
])
def test_decode_image_refuses_non_images_and_bombs_with_a_protocol_error(data, code):
    with pytest.raises(ProtocolError) as exc:
        decode_image(data)
    assert exc.value.code == code


# ---------------------------------------------------------------- protocol


def test_request_round_trips_through_json():
    pngs = [png_bytes(torch.full((3, 4, 4), v)) for v in (0.0, 0.5, 1.0)]
    body = json.loads(json.dumps(encode_request(pngs, 7)))
    assert body["requests"][0]["features"] == [{"type": "LABEL_DETECTION", "maxResults": 7}]
    assert decode_request(body, max_images=16, max_bytes=10_000) == [(png, 7, None) for png in pngs]


def test_response_round_trips_through_json():
    per_image = [[("stop", 0.9), ("yield", 0.05)], [("yield", None)], []]
    body = json.loads(json.dumps(encode_response(per_image)))
    assert body["responses"][1] == {"labelAnnotations": [{"description": "yield"}]}
    assert decode_response(body, 3) == [[Label("stop", 0.9), Label("yield", 0.05)], [Label("yield", None)], []]


def test_an_error_entry_encodes_as_cloud_vision_does_and_decodes_to_its_code():
    body = encode_response([[("stop", 1.0)], (400, "the image content is not a PNG or JPEG file")])
    assert body["responses"][1] == {"error": {"code": 400, "message": "the image content is not a PNG or JPEG file"}}
    with pytest.raises(ProtocolError, match="image 1: the image content") as exc:
        decode_response(body, 2)
    assert exc.value.code == 400


def _entry(**overrides):
    entry = {"image": {"content": base64.b64encode(b"\x89PNG....").decode()}, "features": [{"type": "LABEL_DETECTION"}]}
    entry.update(overrides)
    return entry


@pytest.mark.parametrize("body, max_images, fragment", [
    ([], 16, "JSON object"),
    ("requests", 16, "JSON object"),
    ({}, 16, '"requests" list'),
    ({"requests": {"image": {}}}, 16, '"requests" list'),
    ({"requests": []}, 16, "empty"),
    ({"requests": [_entry()] * 3}, 2, "too many images"),
])
def test_decode_request_refuses_a_malformed_body_with_400(body, max_images, fragment):
    with pytest.raises(ProtocolError, match=fragment) as exc:
        decode_request(body, max_images=max_images, max_bytes=1000)
    assert exc.value.code == 400


@pytest.mark.parametrize("entry, fragment", [
    ("an image", "JSON object"),
    ({"features": [{"type": "LABEL_DETECTION"}]}, '"image" object'),
    (_entry(image={"source": {"imageUri": "gs://bucket/x.png"}}), "image.source is not supported"),
    (_entry(image={"content": 12}), "image.content is missing"),
    (_entry(image={"content": "not base64!"}), "not valid base64"),
    (_entry(image={"content": "é"}), "not valid base64"),
    (_entry(image={"content": ""}), "empty"),
    (_entry(image={"content": base64.b64encode(b"x" * 101).decode()}), "larger than the limit of 100"),
    (_entry(image={"content": "A" * 10_000}), "larger than the limit of 100"),
    (_entry(features=None), '"features" list'),
    (_entry(features=[]), '"features" list'),
    (_entry(features=[{"type": "FACE_DETECTION"}]), "only the LABEL_DETECTION"),
    (_entry(features=[{"type": "LABEL_DETECTION", "maxResults": 0}]), "positive integer"),
    (_entry(features=[{"type": "LABEL_DETECTION", "maxResults": True}]), "positive integer"),
    (_entry(features=[{"type": "LABEL_DETECTION", "maxResults": "5"}]), "positive integer"),
])
def test_decode_request_answers_a_malformed_entry_with_its_message(entry, fragment):
    good = _entry(features=[{"type": "LABEL_DETECTION", "maxResults": 3}])
    results = decode_request({"requests": [good, entry]}, max_images=16, max_bytes=100)
    assert results[0] == (b"\x89PNG....", 3, None)
    data, k, message = results[1]
    assert data is None and k is None and fragment in message


@pytest.mark.parametrize("body, n, fragment", [
    (None, 1, '"responses" list'),
    ({"responses": "x"}, 1, '"responses" list'),
    ({"responses": [{}]}, 2, "1 responses for 2 images"),
    ({"responses": [[]]}, 1, "not a JSON object"),
    ({"responses": [{"labelAnnotations": {"description": "stop"}}]}, 1, "not a list"),
    ({"responses": [{"labelAnnotations": [{"score": 0.5}]}]}, 1, "no description"),
    ({"responses": [{"labelAnnotations": [{"description": "stop", "score": "high"}]}]}, 1, "not a number"),
    ({"responses": [{"labelAnnotations": [{"description": "stop", "score": 1.5}]}]}, 1, "not a number"),
    ({"responses": [{"labelAnnotations": [{"description": "stop", "score": float("nan")}]}]}, 1, "not a number"),
    ({"responses": [{"labelAnnotations": [{"description": "stop", "score": True}]}]}, 1, "not a number"),
    ({"responses": [{"error": "boom"}]}, 1, "refused image 0"),
])
def test_decode_response_refuses_garbage_with_502(body, n, fragment):
    with pytest.raises(ProtocolError, match=fragment) as exc:
        decode_response(body, n)
    assert exc.value.code == 502


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
# near-valid shapes, so the fuzzer reaches the inner checks and not only the outer ones
b64 = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
entries = st.fixed_dictionaries({}, optional={
    "image": json_values | st.fixed_dictionaries({}, optional={"content": b64 | json_values, "source": json_values}),
    "features": json_values | st.lists(st.fixed_dictionaries({}, optional={
        "type": st.just("LABEL_DETECTION") | json_values, "maxResults": st.integers() | json_values}), max_size=3),
})
request_bodies = json_values | st.fixed_dictionaries({"requests": st.lists(entries | json_values, max_size=5) | json_values})
annotations = st.fixed_dictionaries({}, optional={"description": st.text(max_size=8) | json_values,
                                                  "score": st.floats() | st.integers() | json_values})
responses = st.fixed_dictionaries({}, optional={
    "labelAnnotations": st.lists(annotations | json_values, max_size=4) | json_values,
    "error": json_values | st.fixed_dictionaries({"code": st.integers() | json_values, "message": json_values}),
})
response_bodies = json_values | st.fixed_dictionaries({"responses": st.lists(responses | json_values, max_size=4) | json_values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_bodies)
def test_decode_request_on_any_json_returns_entries_or_raises_protocol_error(body):
    try:
        results = decode_request(body, max_images=4, max_bytes=30)
    except ProtocolError as exc:
        assert 400 <= exc.code < 500 and exc.message and "\n" not in exc.message
        return
    assert 1 <= len(results) <= 4
    for data, k, message in results:
        assert (message is None) == isinstance(data, bytes)
        assert message is None or (isinstance(message, str) and data is None and k is None)
        assert data is None or 0 < len(data) <= 30
        assert k is None or (type(k) is int and k >= 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response_bodies, st.integers(0, 4))
def test_decode_response_on_any_json_returns_labels_or_raises_protocol_error(body, n):
    try:
        results = decode_response(body, n)
    except ProtocolError as exc:
        assert 400 <= exc.code < 600 and exc.message and "\n" not in exc.message
        return
    assert len(results) == n
    for row in results:
        for label in row:
            assert isinstance(label.description, str)
            assert label.score is None or (type(label.score) is float and 0 <= label.score <= 1)


# ---------------------------------------------------------------- HttpTarget against a real loopback server

CANNED = [("stop", 0.7), ("yield", 0.2), ("no entry", 0.05), ("speed limit 50", 0.03), ("speed limit 80", 0.01)]


class FakeVision(BaseHTTPRequestHandler):
    """Answers POSTs as the server's ``behaviour`` says and records what arrived."""

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        behaviour = server.behaviour
        if behaviour == "slow":
            time.sleep(1.5)
        if behaviour == "429":
            return self._send(429, b'{"error": {"code": 429, "message": "quota"}}')
        if behaviour == "500":
            return self._send(500, b'{"error": {"code": 500, "message": "the model\\ncrashed"}}')
        if behaviour == "garbage":
            return self._send(200, b"<html>hello</html>")
        n = len(json.loads(body)["requests"])
        if behaviour == "wrong count":
            n += 1
        scores = behaviour != "no scores"
        payload = encode_response([[(name, p if scores else None) for name, p in CANNED]] * n)
        return self._send(200, json.dumps(payload).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


class _VisionServer(ThreadingHTTPServer):
    """Joins its request threads on close (a "slow" answer outlives its client's timeout; it
    must not write into a later test's stderr) and takes a client that hung up as normal."""

    daemon_threads = False

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture()
def vision():
    server = _VisionServer(("127.0.0.1", 0), FakeVision)
    server.behaviour, server.seen = "ok", []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server, path: str = "") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode, expected", [
    ("scores", [Label(name, p) for name, p in CANNED[:3]]),
    ("labels", [Label(name, None) for name, _ in CANNED[:3]]),
    ("label", [Label("stop", None)]),
])
def test_http_target_answers_only_its_modes_fields(vision, mode, expected):
    with HttpTarget(_url(vision), mode, top_k=3) as target:
        assert target.query(_images(2)) == [expected, expected]
    sent = json.loads(vision.seen[0]["body"])["requests"][0]["features"]
    assert sent == [{"type": "LABEL_DETECTION", "maxResults": 1 if mode == "label" else 3}]


def test_http_target_sends_lossless_pngs_in_requests_of_at_most_16(vision):
    images = _images(20, seed=3)
    with HttpTarget(_url(vision, "/v1/images:annotate"), "label", top_k=1) as target:
        assert len(target.query(images)) == 20
        assert target.queries == 20
    assert [s["path"] for s in vision.seen] == ["/v1/images:annotate"] * 2
    bodies = [decode_request(json.loads(s["body"]), 16, 1 << 20) for s in vision.seen]
    assert [len(b) for b in bodies] == [16, 4]
    received = np.stack([decode_image(data) for body in bodies for data, _, _ in body])
    assert np.array_equal(received, (images * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def test_http_target_sends_the_api_key_from_the_environment_only_as_a_header(vision, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret-key")
    target = HttpTarget(_url(vision), "scores", top_k=5, api_key_env=KEY_ENV)
    target.query(_images(1))
    seen = vision.seen[0]
    assert seen["headers"].get("X-Goog-Api-Key") == "s3cret-key"
    assert "s3cret" not in seen["path"] and b"s3cret" not in seen["body"]
    assert "s3cret" not in json.dumps(target.describe()) and "s3cret" not in repr(target)
    monkeypatch.delenv(KEY_ENV)
    HttpTarget(_url(vision), "scores", top_k=5, api_key_env=KEY_ENV).query(_images(1))
    assert "X-Goog-Api-Key" not in vision.seen[1]["headers"]


def test_http_target_refuses_an_api_key_in_the_url():
    with pytest.raises(UserError, match="PHYSICAL_ADV_API_KEY"):
        HttpTarget("https://vision.example/v1/images:annotate?key=abc", "scores", 5)
    with pytest.raises(UserError, match="timeout"):
        HttpTarget("https://vision.example", "scores", 5, timeout=0)


def test_endpoint_url_appends_the_annotate_path_once():
    assert endpoint_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/v1/images:annotate"
    assert endpoint_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/v1/images:annotate"
    assert endpoint_url("https://h/prefix/v1/images:annotate") == "https://h/prefix/v1/images:annotate"
    for bad in ("ftp://h/", "http://", "not a url"):
        with pytest.raises(UserError):
            endpoint_url(bad)


def test_http_target_budget_refuses_before_sending(vision):
    target = HttpTarget(_url(vision), "labels", top_k=2, budget=5)
    target.query(_images(3))
    with pytest.raises(BudgetExhausted):
        target.query(_images(3))
    assert len(vision.seen) == 1 and target.queries == 3 and target.remaining == 2


def test_http_429_ends_the_query_with_budget_exhausted_and_counts_nothing_unanswered(vision):
    target = HttpTarget(_url(vision), "scores", top_k=5)
    target.query(_images(2))
    vision.behaviour = "429"
    with pytest.raises(BudgetExhausted, match="429") as exc:
        target.query(_images(20))
    assert len(vision.seen) == 2  # the first request of the batch was refused, no second was sent
    assert target.queries == 2 and exc.value.used == 2


@pytest.mark.parametrize("behaviour, fragment", [
    ("500", "HTTP 500: the model crashed"),
    ("garbage", "not JSON"),
    ("wrong count", "2 responses for 1 images"),
    ("no scores", "without scores"),
])
def test_http_target_turns_a_bad_answer_into_one_user_error(vision, behaviour, fragment):
    vision.behaviour = behaviour
    with pytest.raises(UserError, match=fragment) as exc:
        HttpTarget(_url(vision), "scores", top_k=5).query(_images(1))
    assert "\n" not in str(exc.value)


def test_http_target_without_scores_is_fine_in_labels_mode(vision):
    vision.behaviour = "no scores"
    assert HttpTarget(_url(vision), "labels", top_k=2).query(_images(1)) == [[Label("stop", None), Label("yield", None)]]


def test_http_target_times_out_with_a_user_error(vision):
    vision.behaviour = "slow"
    with pytest.raises(UserError, match="did not answer within 0.3 s"):
        HttpTarget(_url(vision), "scores", top_k=5, timeout=0.3).query(_images(1))


def test_unreachable_url_is_a_user_error():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError, match="cannot connect"):
        HttpTarget(f"http://127.0.0.1:{port}", "scores", top_k=5).query(_images(1))
