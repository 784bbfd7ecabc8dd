"""``physical-adv serve``: a real uvicorn server on loopback, queried with a real httpx client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, default_sigint, run_cli
from physical_adv.blackbox.protocol import encode_request
from physical_adv.blackbox.server import ANNOTATE_PATH, is_loopback, key_fingerprint, make_app, running_server
from physical_adv.blackbox.target import ModelTarget
from physical_adv.images import to_batch

MAX_BYTES = 256 * 1024
MAX_IMAGES = 4


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Three seeded RGB images of two different sizes (the server batches by size)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((64, 64, 3), (48, 40, 3), (64, 64, 3))]


def _serve(mode: str, top_k: int, budget: int | None):
    target = ModelTarget("signs", mode, top_k, device="cpu")
    return running_server(make_app(target, budget, max_images=MAX_IMAGES, max_bytes=MAX_BYTES))


@pytest.fixture(scope="module")
def scores_url():
    with _serve("scores", 5, None) as url:
        yield url


def _annotate(url: str, pngs: list[bytes], key: str, max_results: int = 5) -> httpx.Response:
    return httpx.post(url + ANNOTATE_PATH, json=encode_request(pngs, max_results), headers={"X-Goog-Api-Key": key}, timeout=30)


def _stats(url: str, key: str | None = None) -> dict:
    params = {"key": key} if key else None
    return httpx.get(url + "/stats", params=params, timeout=10).json()


def _assert_error(response: httpx.Response, code: int, fragment: str) -> None:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"], error
    assert isinstance(error["status"], str) and error["status"].isupper()


def test_annotate_answers_top_k_labels_with_the_models_own_probabilities(scores_url, images, signs_model):
    response = _annotate(scores_url, [_png(img) for img in images], "good")
    assert response.status_code == 200, response.text
    answers = response.json()["responses"]
    assert len(answers) == 3
    for img, answer in zip(images, answers):
        with torch.no_grad():
            probs = torch.softmax(signs_model(to_batch([img])), dim=1)[0]
        values, indices = probs.topk(5)
        labels = answer["labelAnnotations"]
        assert [a["description"] for a in labels] == [signs_model.class_names[int(i)] for i in indices]
        assert np.allclose([a["score"] for a in labels], values.numpy(), atol=1e-5)


def test_max_results_below_top_k_shortens_the_answer(scores_url, images):
    response = _annotate(scores_url, [_png(images[0])], "short", max_results=2)
    assert len(response.json()["responses"][0]["labelAnnotations"]) == 2


@pytest.mark.parametrize("mode, top_k, expected", [("labels", 3, 3), ("label", 5, 1)])
def test_labels_and_label_modes_answer_names_without_scores(images, mode, top_k, expected):
    with _serve(mode, top_k, None) as url:
        response = _annotate(url, [_png(images[0]), _png(images[1])], "modes")
        stats = _stats(url)
    assert response.status_code == 200, response.text
    for answer in response.json()["responses"]:
        labels = answer["labelAnnotations"]
        assert len(labels) == expected
        assert all(set(a) == {"description"} for a in labels), labels
    assert (stats["mode"], stats["top_k"], stats["model"]) == (mode, top_k, "signs")


def test_stats_counts_every_image_per_client(scores_url, images):
    before = _stats(scores_url)["total"]
    _annotate(scores_url, [_png(images[0])] * 3, "count-a")
    _annotate(scores_url, [_png(images[1])], "count-a")
    httpx.post(scores_url + ANNOTATE_PATH, params={"key": "count-b"}, json=encode_request([_png(images[2])] * 2, 5))
    stats = _stats(scores_url, key="count-a")
    assert stats["clients"][key_fingerprint("count-a")] == 4
    assert stats["clients"][key_fingerprint("count-b")] == 2
    assert stats["total"] == before + 6
    assert stats["you"] == key_fingerprint("count-a") and stats["budget"] is None and stats["remaining"] is None
    assert "count-a" not in str(stats)  # a fingerprint, never the key


def test_client_without_key_is_counted_by_address(scores_url, images):
    httpx.post(scores_url + ANNOTATE_PATH, json=encode_request([_png(images[0])], 5))
    assert _stats(scores_url)["clients"]["addr:127.0.0.1"] >= 1


def test_budget_answers_429_and_classifies_nothing_beyond_it(images):
    png = _png(images[0])
    with _serve("scores", 5, 5) as url:
        assert _annotate(url, [png] * 3, "spender").status_code == 200
        refused = _annotate(url, [png] * 3, "spender")
        assert _stats(url, "spender")["remaining"] == 2
        assert _annotate(url, [png] * 2, "spender").status_code == 200
        last = _annotate(url, [png], "spender")
        other = _annotate(url, [png] * 4, "someone-else")
        stats = _stats(url, "spender")
    _assert_error(refused, 429, "budget")
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    _assert_error(last, 429, "used 5 of 5")
    assert other.status_code == 200
    assert stats["clients"] == {key_fingerprint("spender"): 5, key_fingerprint("someone-else"): 4}
    assert (stats["total"], stats["budget"], stats["remaining"]) == (9, 5, 0)


def test_non_image_among_good_ones_gets_a_per_image_error_and_is_not_counted(scores_url, images):
    body = encode_request([_png(images[0]), b"GIF89a not really", _png(images[1])], 5)
    body["requests"].append({"image": {"content": "***not base64***"}, "features": [{"type": "LABEL_DETECTION"}]})
    response = httpx.post(scores_url + ANNOTATE_PATH, json=body, headers={"X-Goog-Api-Key": "mixed"})
    assert response.status_code == 200, response.text
    answers = response.json()["responses"]
    assert len(answers[0]["labelAnnotations"]) == 5 and len(answers[2]["labelAnnotations"]) == 5
    assert answers[1]["error"]["code"] == 400 and "PNG or JPEG" in answers[1]["error"]["message"]
    assert answers[3]["error"]["code"] == 400 and "base64" in answers[3]["error"]["message"]
    assert _stats(scores_url)["clients"][key_fingerprint("mixed")] == 2


def _chunks(data: bytes, size: int = 16384):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("send, code, fragment", [
    (lambda url: httpx.post(url + ANNOTATE_PATH, content=b'{"requests": [', headers={"X-Goog-Api-Key": "bad"}), 400, "not valid JSON"),
    (lambda url: httpx.post(url + ANNOTATE_PATH, content=b"\xff\xfe\x00garbage", headers={"X-Goog-Api-Key": "bad"}), 400, "not valid JSON"),
    (lambda url: httpx.post(url + ANNOTATE_PATH, content=b"[" * 100_000, headers={"X-Goog-Api-Key": "bad"}), 400, "not valid JSON"),
    (lambda url: httpx.post(url + ANNOTATE_PATH, json={"images": []}, headers={"X-Goog-Api-Key": "bad"}), 400, '"requests" list'),
    (lambda url: httpx.post(url + ANNOTATE_PATH, json=[1, 2], headers={"X-Goog-Api-Key": "bad"}), 400, "JSON object"),
    (lambda url: httpx.post(url + ANNOTATE_PATH, json=encode_request([b"\x89PNG"] * (MAX_IMAGES + 1), 5),
                            headers={"X-Goog-Api-Key": "bad"}), 400, "too many images"),
    (lambda url: httpx.post(url + ANNOTATE_PATH, content=b" " * (MAX_BYTES + 1), headers={"X-Goog-Api-Key": "bad"}), 413, "exceeds the limit"),
    (lambda url: httpx.post(url + ANNOTATE_PATH, content=_chunks(b" " * (MAX_BYTES * 2)), headers={"X-Goog-Api-Key": "bad"}),
     413, "exceeds the limit"),
    (lambda url: httpx.get(url + ANNOTATE_PATH, headers={"X-Goog-Api-Key": "bad"}), 405, "not allowed"),
    (lambda url: httpx.post(url + "/v1/files:annotate", json={}, headers={"X-Goog-Api-Key": "bad"}), 404, "no such endpoint"),
], ids=["truncated-json", "not-utf8", "deep-nesting", "wrong-shape", "not-an-object", "too-many-images",
        "oversize-declared", "oversize-chunked", "wrong-method", "unknown-path"])
def test_bad_requests_answer_a_cloud_vision_json_error_and_count_nothing(scores_url, send, code, fragment):
    response = send(scores_url)
    _assert_error(response, code, fragment)
    assert key_fingerprint("bad") not in _stats(scores_url)["clients"]
    assert httpx.get(scores_url + "/healthz").json() == {"status": "ok"}


def test_concurrent_clients_are_counted_exactly(images):
    pngs = [_png(img) for img in images]
    sent, answered = [0] * 8, [0] * 8

    def client(t: int) -> None:
        with httpx.Client(timeout=60) as http:
            for r in range(25):
                batch = pngs[: 1 + (t + r) % 2]
                response = http.post(url + ANNOTATE_PATH, json=encode_request(batch, 3), headers={"X-Goog-Api-Key": f"c{t % 3}"})
                sent[t] += len(batch)
                answered[t] += response.status_code == 200

    with _serve("scores", 3, None) as url:
        threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stats = _stats(url)
    assert answered == [25] * 8
    assert stats["total"] == sum(sent) == 300
    assert stats["clients"] == {key_fingerprint(f"c{k}"): sum(sent[k::3]) for k in range(3)}  # threads share keys


def test_concurrent_requests_never_overspend_a_shared_budget(images):
    png = _png(images[0])
    codes: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(10):
                status = http.post(url + ANNOTATE_PATH, json=encode_request([png], 1), params={"key": "shared"}).status_code
                with lock:
                    codes.append(status)

    with _serve("label", 1, 30) as url:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stats = _stats(url)
    assert sorted(set(codes)) == [200, 429] and codes.count(200) == 30
    assert stats["total"] == 30


@pytest.mark.parametrize("args, fragment", [
    (["--mode", "probabilities"], "mode must be one of scores, labels, label"),
    (["--top-k", "0"], "top-k must be at least 1"),
    (["--budget", "0"], "budget must be at least 1"),
    (["--port", "70000"], "port must be in 0..65535"),
    (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid"),
])
def test_serve_bad_options_are_one_line_errors(capsys, args, fragment):
    code, _, err = run_cli(capsys, "serve", *args)
    assert_one_line_error(code, err, fragment)


def test_serve_on_a_port_in_use_is_a_one_line_error(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, _, err = run_cli(capsys, "serve", "--port", busy.getsockname()[1])
    assert_one_line_error(code, err, "cannot listen on 127.0.0.1")


@pytest.mark.parametrize("host, expected", [("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False)])
def test_only_loopback_hosts_count_as_loopback(host, expected):
    """serve warns when the host is not loopback."""
    assert is_loopback(host) is expected


def test_serve_help_explains_every_option(capsys):
    code, out, _ = run_cli(capsys, "serve", "--help")
    assert code == 0
    for option in ("--model", "--top-k", "--mode", "--host", "--port", "--budget", "--device", "--classes"):
        assert option in out


def test_serve_command_prints_its_url_answers_and_stops_cleanly_on_ctrl_c(images):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "physical_adv", "serve", "--port", "0", "--device", "cpu", "--budget", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], preexec_fn=default_sigint)
    try:
        first = proc.stdout.readline()
        url = first.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), first
        assert "curl" in proc.stdout.readline()
        response = _annotate(url, [_png(images[0])], "cli")
        assert response.status_code == 200 and len(response.json()["responses"][0]["labelAnnotations"]) == 5
        assert _stats(url, "cli")["remaining"] == 6
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
