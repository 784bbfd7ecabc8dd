"""Load test of ``physical-adv serve``: concurrent clients over loopback, exact counting, no crash.

Usage: python benchmarks/serve_load.py [--clients 8] [--requests 200] [--images-per-request 1] [--malformed-every 10]
       [--timeout 110] [--json]

Starts ``physical-adv serve --port 0 --device cpu`` (the ``signs`` model, ``scores`` mode, top-5) in another process
on 127.0.0.1 and reads its URL from its first line. ``--clients`` threads then each send ``--requests`` requests
with their own API key: every ``--malformed-every``-th one is malformed (truncated JSON, wrong shape, too many
images, wrong method, unknown path, in turn), the rest carry ``--images-per-request`` seeded 64x64 PNGs. Checks:
every well-formed request answered 200 with labels for each image, every malformed one a 4xx JSON error, the
server's ``/stats`` total (and the images it classified) equal the images the clients sent, and the server still
answers. Prints requests/s and the latency p50/p95; exits 1 when a check fails. Everything is bounded by
``--timeout`` seconds, after which the server is stopped regardless.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import cv2
import httpx
import numpy as np

from physical_adv.blackbox.protocol import encode_request
from physical_adv.blackbox.server import ANNOTATE_PATH, key_fingerprint

MAX_IMAGES = 16  # the server's default per-request limit


@dataclass
class ClientLog:
    """What one client thread sent and got back."""

    images_sent: int = 0
    good_latencies: list[float] = field(default_factory=list)
    bad_latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    finished: bool = False


def _pngs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ok, buf = cv2.imencode(".png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        assert ok
        out.append(buf.tobytes())
    return out


def _malformed(http: httpx.Client, url: str, kind: int) -> httpx.Response:
    """One of five malformed requests, each of which must answer a 4xx."""
    if kind == 0:
        return http.post(url + ANNOTATE_PATH, content=b'{"requests": [{"image": ')
    if kind == 1:
        return http.post(url + ANNOTATE_PATH, json={"images": [{"content": "aGVsbG8="}]})
    if kind == 2:
        return http.post(url + ANNOTATE_PATH, json=encode_request([b"x"] * (MAX_IMAGES + 1), 5))
    if kind == 3:
        return http.get(url + ANNOTATE_PATH)
    return http.post(url + "/v1/images:detect", json={})


def _client(url: str, index: int, args, pngs: list[bytes], deadline: float, log: ClientLog) -> None:
    body = encode_request(pngs[: args.images_per_request], 5)
    headers = {"X-Goog-Api-Key": f"load-{index}"}
    with httpx.Client(timeout=30, headers=headers) as http:
        for r in range(args.requests):
            if time.monotonic() > deadline:
                log.failures.append(f"client {index}: out of time after {r} requests")
                return
            bad = (index * args.requests + r) % args.malformed_every == args.malformed_every - 1
            start = time.perf_counter()
            try:
                reply = _malformed(http, url, r % 5) if bad else http.post(url + ANNOTATE_PATH, json=body)
            except httpx.HTTPError as exc:
                log.failures.append(f"client {index} request {r}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            if bad:
                log.bad_latencies.append(elapsed)
                ok = 400 <= reply.status_code < 500 and "error" in reply.json()
            else:
                log.good_latencies.append(elapsed)
                log.images_sent += args.images_per_request
                answers = reply.json().get("responses", []) if reply.status_code == 200 else []
                ok = len(answers) == args.images_per_request and all(len(a.get("labelAnnotations", [])) == 5 for a in answers)
            if not ok:
                log.failures.append(f"client {index} request {r} ({'malformed' if bad else 'well-formed'}): "
                                    f"{reply.status_code} {reply.text[:200]}")
    log.finished = True


def _start_server(timeout: float) -> tuple[subprocess.Popen, str]:
    """``physical-adv serve --port 0`` in another process; returns it and the URL it printed."""
    cmd = [sys.executable, "-m", "physical_adv", "serve", "--port", "0", "--device", "cpu", "--top-k", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=timeout)
        return proc, first.split(" at ")[1].split()[0]
    except (queue.Empty, IndexError):
        _stop_server(proc)
        raise SystemExit(f"the server did not start: {proc.stderr.read()[-2000:]}")


def _stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="requests per client")
    ap.add_argument("--images-per-request", type=int, default=1)
    ap.add_argument("--malformed-every", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=110.0, help="seconds for the whole test, server start included")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.images_per_request <= MAX_IMAGES and args.clients >= 1 and args.requests >= 1 and args.malformed_every >= 2):
        ap.error(f"need clients, requests ≥ 1, images-per-request in 1..{MAX_IMAGES}, malformed-every ≥ 2")
    deadline = time.monotonic() + args.timeout
    proc, url = _start_server(timeout=args.timeout)
    try:
        pngs = _pngs(args.images_per_request)
        logs = [ClientLog() for _ in range(args.clients)]
        threads = [threading.Thread(target=_client, args=(url, i, args, pngs, deadline, logs[i])) for i in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        wall = time.perf_counter() - start
        stats = httpx.get(url + "/stats", timeout=10).json()
        alive = httpx.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        exit_code = _stop_server(proc)
    failures = [f for log in logs for f in log.failures] + [f"client {i} did not finish" for i, log in enumerate(logs) if not log.finished]
    sent = sum(log.images_sent for log in logs)
    if stats["total"] != sent or stats["classified"] != sent:
        failures.append(f"/stats total {stats['total']} (classified {stats['classified']}) != {sent} images sent")
    per_client = {key_fingerprint(f"load-{i}"): log.images_sent for i, log in enumerate(logs) if log.images_sent}
    if stats["clients"] != per_client:
        failures.append("per-client counts differ from what each client sent")
    if not alive:
        failures.append("the server stopped answering")
    good = [x for log in logs for x in log.good_latencies]
    bad = [x for log in logs for x in log.bad_latencies]
    out = {
        "clients": args.clients, "requests": len(good) + len(bad), "well_formed": len(good), "malformed": len(bad),
        "images_per_request": args.images_per_request, "images_counted": stats["total"], "images_sent": sent,
        "seconds": round(wall, 2), "requests_per_s": round((len(good) + len(bad)) / wall, 1),
        "images_per_s": round(sent / wall, 1),
        "p50_ms": round(1000 * _percentile(good, 50), 1), "p95_ms": round(1000 * _percentile(good, 95), 1),
        "malformed_p50_ms": round(1000 * _percentile(bad, 50), 1),
        "server_exit_code": exit_code, "failures": failures[:20], "ok": not failures,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['requests']} requests ({out['malformed']} malformed) from {args.clients} clients in {out['seconds']} s: "
              f"{out['requests_per_s']} requests/s, {out['images_per_s']} images/s; well-formed latency "
              f"p50 {out['p50_ms']} ms, p95 {out['p95_ms']} ms; /stats counted {out['images_counted']} of "
              f"{sent} images sent; {'all checks passed' if out['ok'] else 'FAILED: ' + '; '.join(failures[:5])}")
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
