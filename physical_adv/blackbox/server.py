"""``physical-adv serve``: a model behind an HTTP API shaped like Google Cloud Vision's label detection.

``POST /v1/images:annotate`` takes Cloud Vision's ``LABEL_DETECTION`` request (base64 images, several per request)
and answers ``labelAnnotations`` with only the fields of the target's mode; ``GET /stats`` shows how many images each
client has had classified; ``GET /healthz`` says the server is up. The request and response shapes live in
:mod:`physical_adv.blackbox.protocol` (one home, shared with the HTTP client); this module adds HTTP, per-client
counting and the budget.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Iterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from physical_adv.blackbox.protocol import ProtocolError, decode_image, decode_request, encode_response
from physical_adv.blackbox.target import MODES, ModelTarget
from physical_adv.errors import UserError
from physical_adv.images import to_batch

MiB = 1 << 20
ANNOTATE_PATH = "/v1/images:annotate"

# google.rpc status names of the codes Cloud Vision answers with; other codes use the HTTP reason phrase
_RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


@dataclass(frozen=True)
class ServeConfig:
    """What ``physical-adv serve`` serves and where.

    Attributes:
        model: model spec (``signs``, ``torchvision:NAME``, a TorchScript file or ``module:factory``).
        top_k: labels per image at most (a request's ``maxResults`` can ask for fewer).
        mode: ``scores`` (names and probabilities), ``labels`` (names only) or ``label`` (the top name only).
        host: address to listen on; loopback unless you mean to expose the model.
        port: TCP port, 0 for any free one (the URL printed names it).
        budget: images each client may have classified, or None for no limit.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        classes: class-name file for a TorchScript or ``module:factory`` model.
    """

    model: str = "signs"
    top_k: int = 5
    mode: str = "scores"
    host: str = "127.0.0.1"
    port: int = 8080
    budget: int | None = None
    device: str = "auto"
    classes: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.top_k < 1:
            raise ValueError(f"top-k must be at least 1, got {self.top_k}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be at least 1 image (or left out for no limit), got {self.budget}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not self.host.strip():
            raise ValueError("host must not be empty")


def key_fingerprint(key: str) -> str:
    """How ``/stats`` names a client that sent an API key: never the key itself, so ``/stats`` can be shared.

    Args:
        key: the ``X-Goog-Api-Key`` header or ``?key=`` value.

    Returns:
        ``key:`` and the first 12 hex digits of the key's SHA-256.
    """
    return "key:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def client_id(request: Request) -> str:
    """The client a request counts against: its API key (header first, then ``?key=``), else its address."""
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if key:
        return key_fingerprint(key)
    return "addr:" + (request.client.host if request.client else "unknown")


class QueryLedger:
    """Images classified per client, and the budget, under one lock: a request reserves its images before
    they are classified, so concurrent requests can never overspend or be miscounted."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, client: str, n: int) -> bool:
        """Count ``n`` images against ``client`` if its budget allows all of them; else count nothing.

        Returns:
            True when reserved, False when the request would exceed the budget.
        """
        with self._lock:
            used = self._counts.get(client, 0)
            if self.budget is not None and used + n > self.budget:
                return False
            self._counts[client] = used + n
            return True

    def refund(self, client: str, n: int) -> None:
        """Take back a reservation whose images were never classified (the model failed)."""
        with self._lock:
            self._counts[client] -= n

    def used(self, client: str) -> int:
        with self._lock:
            return self._counts.get(client, 0)

    def snapshot(self) -> tuple[dict[str, int], int]:
        """``(per-client counts, total)`` read at one instant."""
        with self._lock:
            counts = dict(self._counts)
        return counts, sum(counts.values())


def error_response(code: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A whole-request error in Cloud Vision's shape: ``{"error": {"code", "message", "status"}}``."""
    status = _RPC_STATUS.get(code) or HTTPStatus(code).name
    body = {"error": {"code": code, "message": message, "status": status}}
    return JSONResponse(body, status_code=code, headers=headers)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing more than ``max_bytes`` from the header or from what actually arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ProtocolError(400, f"bad Content-Length header {declared!r}")
        if int(declared) > max_bytes:
            raise ProtocolError(413, f"request body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ProtocolError(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_body(body: bytes, max_images: int, max_bytes: int) -> tuple[list, list]:
    """Parse a request body and decode its images.

    Returns:
        ``(entries, decoded)``: the protocol's ``(bytes, maxResults, error)`` per entry, and per entry its
        ``(H, W, 3)`` uint8 RGB image or ``(code, message)`` when it cannot be classified. A body that is not
        JSON or not a label-detection request raises :class:`ProtocolError`.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise ProtocolError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
    entries = decode_request(parsed, max_images, max_bytes)
    return entries, _decode_images(entries)


def _decode_images(entries: list) -> list:
    """Per entry: ``(H, W, 3)`` uint8 RGB, or ``(code, message)`` for an entry that cannot be classified."""
    out = []
    for data, _, error in entries:
        if error is not None:
            out.append((400, error))
            continue
        try:
            out.append(decode_image(data))
        except ProtocolError as exc:
            out.append((exc.code, exc.message))
    return out


def _classify(target: ModelTarget, images: list[np.ndarray]) -> list[list]:
    """Labels for each image, batching the images that share a size (so each is classified exactly as alone)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    labels: list = [None] * len(images)
    for indices in by_shape.values():
        batch = to_batch([images[i] for i in indices])
        for i, row in zip(indices, target.query(batch)):
            labels[i] = row
    return labels


def make_app(target: ModelTarget, budget: int | None, max_images: int = 16, max_bytes: int = 8 * MiB) -> FastAPI:
    """The HTTP application: label detection for ``target``, counted per client.

    Args:
        target: the model wrapper; its mode decides which fields answers carry. Give it no budget of its own:
            the server's budget is per client.
        budget: images each client may have classified, or None. A request that would exceed it answers 429
            and classifies nothing.
        max_images: images per request at most (more is a 400).
        max_bytes: request body size at most (more is a 413, checked before anything is decoded).

    Returns:
        A FastAPI app with ``POST /v1/images:annotate``, ``GET /stats`` and ``GET /healthz``.
    """
    app = FastAPI(title="physical-adv label detection", docs_url=None, redoc_url=None, openapi_url=None)
    ledger = QueryLedger(budget)
    model_lock = threading.Lock()  # one classification at a time: the model and its own counters are not shared-safe

    def classify_locked(images: list[np.ndarray]) -> list[list]:
        with model_lock:
            return _classify(target, images)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint {request.url.path!r}; POST {ANNOTATE_PATH}, GET /stats or GET /healthz",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}")

    @app.post(ANNOTATE_PATH)
    async def annotate(request: Request) -> JSONResponse:
        client = client_id(request)
        try:
            body = await _read_body(request, max_bytes)
            entries, decoded = await run_in_threadpool(_decode_body, body, max_images, max_bytes)
        except ProtocolError as exc:
            return error_response(exc.code, exc.message)
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        if good and not ledger.reserve(client, len(good)):
            used = ledger.used(client)
            return error_response(429, f"query budget spent: this client has used {used} of {budget} images and "
                                       f"this request asks for {len(good)} more")
        try:
            labels = await run_in_threadpool(classify_locked, [decoded[i] for i in good]) if good else []
        except Exception:  # a cancelled request (client gone) still had its images classified: keep them counted
            ledger.refund(client, len(good))
            raise
        per_image = list(decoded)
        for i, row in zip(good, labels):
            limit = entries[i][1]
            row = row if limit is None else row[:limit]
            per_image[i] = [(label.description, label.score) for label in row]
        return JSONResponse(encode_response(per_image))

    @app.get("/stats")
    async def stats(request: Request) -> dict:
        counts, total = ledger.snapshot()
        you = client_id(request)
        return {"clients": counts, "total": total, "classified": target.queries, "budget": budget, "you": you,
                "remaining": None if budget is None else budget - counts.get(you, 0),
                "mode": target.mode, "top_k": target.top_k, "model": target.spec}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port), ready to hand to uvicorn.

    Raises:
        UserError: the host does not resolve or the port cannot be bound (in use, privileged).
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (socket.gaierror, OSError) as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` for a bound socket (IPv6 addresses in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_server(app: FastAPI):
    import uvicorn

    # no access log: a ?key= in the URL would land in it
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 15.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread for as long as the block lasts (tests, examples).

    Args:
        app: e.g. from :func:`make_app`.
        host, port: where to listen; port 0 picks a free one.
        timeout: seconds to wait for the server to start and to stop.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:40123``.
    """
    sock = listen_socket(host, port)
    server = _uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="physical-adv-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise RuntimeError("the server did not start")
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def example_curl(url: str, top_k: int) -> str:
    """A one-line shell command that asks the server at ``url`` to label ``photo.jpg``."""
    body = ('{"requests":[{"image":{"content":"\'"$(base64 -w0 photo.jpg)"\'"},'
            f'"features":[{{"type":"LABEL_DETECTION","maxResults":{top_k}}}]}}]}}')
    return f"curl -s -X POST '{url}{ANNOTATE_PATH}' -H 'Content-Type: application/json' -d '{body}'"


def serve(cfg: ServeConfig) -> None:
    """Load the model and serve it until Ctrl-C (``physical-adv serve``).

    Prints the URL (with the real port when ``cfg.port`` is 0) and an example ``curl`` line on stdout, and a
    warning on stderr when ``cfg.host`` is not a loopback address.
    """
    sock = listen_socket(cfg.host, cfg.port)  # a port in use fails before the model loads
    try:
        target = ModelTarget(cfg.model, cfg.mode, cfg.top_k, budget=None, device=cfg.device, classes=cfg.classes)
    except BaseException:
        sock.close()
        raise
    app = make_app(target, cfg.budget)
    if not is_loopback(cfg.host):
        print(f"physical-adv: warning: listening on {cfg.host}, not loopback: anyone who can reach this machine "
              "can query the model", file=sys.stderr, flush=True)
    url = socket_url(sock)
    budget = "no budget" if cfg.budget is None else f"budget {cfg.budget} images per client"
    print(f"serving {cfg.model} ({cfg.mode}, top-{cfg.top_k}, {budget}) at {url}  (Ctrl-C stops)", flush=True)
    print(f"  try: {example_curl(url, cfg.top_k)}", flush=True)
    print(f"  counts: curl -s {url}/stats", flush=True)
    try:
        _uvicorn_server(app).run(sockets=[sock])
    finally:
        sock.close()
