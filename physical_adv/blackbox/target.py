"""Targets an attacker can only query: a local model behind a wall, or an HTTP label-detection API.

Every target answers ``query(images)`` with what a real service returns, in one mode:

* ``scores`` — the top-k class names with their probabilities (Cloud Vision's ``labelAnnotations``);
* ``labels`` — the top-k names, no scores;
* ``label`` — the top-1 name only.

It counts every image sent and refuses, before sending anything, a batch that would pass its
budget (:class:`BudgetExhausted`), so an attack can stop cleanly with its best result so far.
Nothing is cached: asking twice costs twice (Ilyas et al. 2018, "Black-box Adversarial Attacks
with Limited Queries and Information").
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import httpx
import torch

from physical_adv.blackbox.protocol import Label, ProtocolError, decode_response, encode_request, one_line, png_bytes
from physical_adv.errors import UserError

MODES = ("scores", "labels", "label")
ENDPOINT = "/v1/images:annotate"
MODEL_BATCH = 256  # images per forward pass of a ModelTarget
HTTP_BATCH = 16  # images per request, Cloud Vision's limit
API_KEY_ENV = "PHYSICAL_ADV_API_KEY"


class BudgetExhausted(Exception):
    """The query budget cannot pay for the batch asked (nothing of it was sent).

    Attributes:
        used: images the target had answered when the batch was refused.
        budget: the budget (None when the server, not the client, ran out: HTTP 429).
    """

    def __init__(self, used: int, budget: int | None, message: str | None = None) -> None:
        super().__init__(message or f"the query budget is spent: {used} of {budget} images used")
        self.used = used
        self.budget = budget


def check_settings(mode: str, top_k: int, budget: int | None) -> None:
    """Raise :class:`UserError` naming the first bad setting of a query target."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top-k must be a positive integer, got {top_k!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise UserError(f"budget must be a positive number of images, got {budget!r}")


class QueryTarget(ABC):
    """A classifier seen only through its answers.

    Attributes:
        mode: ``scores``, ``labels`` or ``label`` (see the module docstring).
        top_k: labels answered per image in ``scores`` and ``labels`` modes (``label``: 1).
        budget: the most images this target will answer, or None for no limit.
        queries: images sent so far.
    """

    def __init__(self, mode: str, top_k: int, budget: int | None) -> None:
        check_settings(mode, top_k, budget)
        self.mode = mode
        self.top_k = top_k
        self.budget = budget
        self.queries = 0

    @property
    def remaining(self) -> int | None:
        """Images the budget still pays for, or None without a budget."""
        return None if self.budget is None else self.budget - self.queries

    @property
    def labels_per_image(self) -> int:
        return 1 if self.mode == "label" else self.top_k

    def query(self, images: torch.Tensor) -> list[list[Label]]:
        """Ask the target about a batch of images; every image counts as one query.

        Args:
            images: ``(N, 3, H, W)`` RGB float in [0, 1], any device; gradients never flow back.

        Returns:
            Per image its labels, best first: ``scores`` → top-k ``Label(name, probability)``;
            ``labels`` → top-k ``Label(name, None)``; ``label`` → one ``Label(name, None)``.
            Raises :class:`BudgetExhausted`, before sending anything, when ``queries + N``
            would pass the budget.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {getattr(images, 'shape', type(images))}")
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got {images.dtype}")
        n = images.shape[0]
        if self.budget is not None and self.queries + n > self.budget:
            raise BudgetExhausted(self.queries, self.budget)
        if n == 0:
            return []
        self.queries += n
        return [self._keep_mode_fields(labels) for labels in self._answer(images.detach())]

    def _keep_mode_fields(self, labels: list[Label]) -> list[Label]:
        """Only what the mode shows: scores dropped outside ``scores``, at most k labels."""
        labels = labels[: self.labels_per_image]
        if self.mode != "scores":
            return [Label(label.description, None) for label in labels]
        if any(label.score is None for label in labels):
            raise UserError(f"{self.name()} answered labels without scores; is it running in labels or label mode?")
        return labels

    @abstractmethod
    def _answer(self, images: torch.Tensor) -> list[list[Label]]:
        """The target's labels for ``images`` (already counted), best first."""

    @abstractmethod
    def name(self) -> str:
        """The model spec or endpoint URL, for messages (never a secret)."""

    def describe(self) -> dict:
        """What ``attack.json`` records about the target (never an API key)."""
        return {"mode": self.mode, "top_k": self.top_k, "budget": self.budget, "queries": self.queries}


class ModelTarget(QueryTarget):
    """A local model behind a wall: no autograd, only the mode's fields come out.

    Attributes:
        spec: the model spec it was loaded from.
        class_names: every name the model can answer (an attacker may know a service's label set).
    """

    def __init__(
        self,
        spec: str,
        mode: str = "scores",
        top_k: int = 5,
        budget: int | None = None,
        device: str | torch.device | None = "cpu",
        classes: str | Path | list | None = None,
    ) -> None:
        super().__init__(mode, top_k, budget)
        from physical_adv.models import load_model

        self._model = load_model(spec, device, classes)
        self.spec = spec
        self.class_names = tuple(self._model.class_names)
        if top_k > len(self.class_names):
            raise UserError(f"top-k {top_k} is more than the {len(self.class_names)} classes of model {spec!r}")

    def name(self) -> str:
        return f"model {self.spec!r}"

    def _answer(self, images: torch.Tensor) -> list[list[Label]]:
        k = self.labels_per_image
        answers = []
        with torch.inference_mode():
            for batch in images.split(MODEL_BATCH):
                probs = self._model(batch.to(self._model.device, torch.float32)).float().softmax(dim=1)
                top = probs.topk(k, dim=1)
                for scores, indices in zip(top.values.tolist(), top.indices.tolist()):
                    answers.append([Label(self.class_names[i], p) for i, p in zip(indices, scores)])
        return answers

    def describe(self) -> dict:
        return {"kind": "model", "spec": self.spec, **super().describe()}


class HttpTarget(QueryTarget):
    """A label-detection API over HTTP: ``physical-adv serve`` or a Cloud-Vision-like endpoint.

    Images travel as lossless PNG (8 bits per channel), up to 16 per request. The API key is
    read from an environment variable and sent only as the ``X-Goog-Api-Key`` header.

    Attributes:
        url: the ``…/v1/images:annotate`` endpoint.
    """

    def __init__(
        self,
        url: str,
        mode: str = "scores",
        top_k: int = 5,
        budget: int | None = None,
        timeout: float = 30,
        api_key_env: str = API_KEY_ENV,
    ) -> None:
        super().__init__(mode, top_k, budget)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise UserError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = endpoint_url(url)
        self.timeout = timeout
        key = os.environ.get(api_key_env, "").strip()
        self._headers = {"X-Goog-Api-Key": key} if key else {}
        self._client: httpx.Client | None = None

    def name(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"HttpTarget({self.url!r}, mode={self.mode!r}, top_k={self.top_k}, budget={self.budget})"

    def close(self) -> None:
        """Close the connection pool (the target reopens it when queried again)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _answer(self, images: torch.Tensor) -> list[list[Label]]:
        answers: list[list[Label]] = []
        for start in range(0, images.shape[0], HTTP_BATCH):
            chunk = images[start : start + HTTP_BATCH]
            try:
                answers += self._post([png_bytes(image) for image in chunk])
            except BudgetExhausted as exc:
                # the server answered none of this request, and no later one was sent: not counted
                self.queries -= images.shape[0] - start
                exc.used = self.queries
                raise
        return answers

    def _post(self, pngs: list[bytes]) -> list[list[Label]]:
        """One request for ``pngs``; every failure becomes one clear :class:`UserError`."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        body = encode_request(pngs, self.labels_per_image)
        try:
            reply = self._client.post(self.url, json=body, headers=self._headers)
        except httpx.TimeoutException:
            raise UserError(f"{self.url} did not answer within {self.timeout:g} s") from None
        except httpx.ConnectError:
            raise UserError(f"cannot connect to {self.url} (is the server running and the address right?)") from None
        except httpx.HTTPError as exc:
            raise UserError(f"request to {self.url} failed: {type(exc).__name__}") from None
        if reply.status_code == 429:
            raise BudgetExhausted(self.queries, self.budget, f"{self.url} answered HTTP 429: its query budget is spent")
        if reply.status_code != 200:
            raise UserError(f"{self.url} answered HTTP {reply.status_code}{_error_detail(reply)}")
        try:
            return decode_response(reply.json(), len(pngs))
        except ValueError as exc:  # not JSON, or ProtocolError: the wrong shape or a per-image error
            what = exc.message if isinstance(exc, ProtocolError) else "not JSON"
            raise UserError(f"{self.url} answered something that is not a label-detection response: {what}") from None

    def describe(self) -> dict:
        return {"kind": "http", "url": self.url, **super().describe()}


def _error_detail(reply: httpx.Response) -> str:
    """``": message"`` from a JSON error body (Cloud Vision's or FastAPI's), else empty."""
    try:
        body = reply.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else body.get("detail") if isinstance(body, dict) else None
    return f": {one_line(message)}" if isinstance(message, str) and message.strip() else ""


def endpoint_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` → the ``…/v1/images:annotate`` endpoint.

    Raises :class:`UserError` for another scheme, no host, or a query string (an API key
    belongs in the environment variable, never in the URL).
    """
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UserError(f"not a valid URL: {url!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UserError(f"expected an http:// or https:// URL with a host, got {url!r}")
    if parsed.query or parsed.userinfo:
        raise UserError(f"put no query string or credentials in the URL; the API key is read from ${API_KEY_ENV}")
    path = parsed.path.rstrip("/")
    if not path.endswith(ENDPOINT):
        path += ENDPOINT
    return str(parsed.copy_with(path=path, fragment=None))


def open_target(
    spec_or_url: str,
    mode: str = "scores",
    top_k: int = 5,
    budget: int | None = None,
    device: str | torch.device | None = "cpu",
    classes: str | Path | list | None = None,
) -> QueryTarget:
    """The query target named by a model spec or an ``http(s)://`` URL.

    Args:
        spec_or_url: a model spec (``signs``, ``torchvision:NAME``, a TorchScript file,
            ``module:factory``) or the URL of a label-detection API.
        mode: ``scores``, ``labels`` or ``label``.
        top_k: labels per image (``scores`` and ``labels`` modes).
        budget: the most images to send, or None.
        device: where a model runs (ignored for URLs).
        classes: class names for TorchScript and factory models (ignored for URLs).

    Returns:
        A :class:`HttpTarget` for a URL, else a :class:`ModelTarget`. Bad settings raise :class:`UserError`.
    """
    check_settings(mode, top_k, budget)
    if is_url(spec_or_url):
        return HttpTarget(spec_or_url, mode, top_k, budget)
    return ModelTarget(spec_or_url, mode, top_k, budget, device, classes)


def is_url(spec: str) -> bool:
    """Whether a target spec names an ``http(s)://`` label-detection API (else it is a model spec)."""
    return spec.strip().lower().startswith(("http://", "https://"))


__all__ = [
    "is_url",
    "MODES",
    "BudgetExhausted",
    "HttpTarget",
    "Label",
    "ModelTarget",
    "QueryTarget",
    "check_settings",
    "endpoint_url",
    "open_target",
]
