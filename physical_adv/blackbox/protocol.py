"""The wire format of a cloud-vision label-detection API, shared by ``serve`` and its client.

Google Cloud Vision's ``POST /v1/images:annotate`` with the ``LABEL_DETECTION`` feature::

    {"requests": [{"image": {"content": BASE64}, "features": [{"type": "LABEL_DETECTION", "maxResults": K}]}]}
    → {"responses": [{"labelAnnotations": [{"description": NAME, "score": P}, …]} | {"error": {"code", "message"}}]}

Pure functions, no I/O: the server and the client both encode and decode here, and both
turn images into bytes with the one codec below (:func:`png_bytes`, :func:`decode_image`).
Garbage from either side raises :class:`ProtocolError` (never another exception).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import torch

FEATURE = "LABEL_DETECTION"
MAX_PIXELS = 4096 * 4096  # a decoded image larger than this is refused before decoding
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"


@dataclass(frozen=True)
class Label:
    """One label a target answered: its class name and, in ``scores`` mode, its probability."""

    description: str
    score: float | None


class ProtocolError(ValueError):
    """A body, response or image that does not follow the protocol.

    Attributes:
        code: the HTTP status that fits (400 malformed request, 413 too large, 502 garbage answer).
        message: one sentence saying what is wrong.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with its whitespace collapsed and cut to ``limit`` characters, for an error message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- images


def png_bytes(image: torch.Tensor) -> bytes:
    """Encode one image losslessly as PNG, quantised to 8 bits the way every client does it.

    Args:
        image: ``(3, H, W)`` RGB float in [0, 1] (values outside are clamped), any device.

    Returns:
        The PNG file's bytes.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one (3, H, W) image, got shape {tuple(image.shape)}")
    rgb = (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from a PNG or JPEG header without decoding; None if not found."""
    if data[:8] == _PNG_SIGNATURE:
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    if data[:2] != _JPEG_SOI:
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a PNG or JPEG file as RGB, refusing anything else before OpenCV sees it.

    Args:
        data: the file's bytes.
        max_pixels: the largest width × height accepted (checked from the header, so a tiny
            file that claims a huge image is refused without allocating it).

    Returns:
        ``(H, W, 3)`` uint8 RGB. Raises :class:`ProtocolError` 400 for a non-image or corrupt
        file, 413 for one larger than ``max_pixels``.
    """
    if not isinstance(data, (bytes, bytearray)) or not (data[:8] == _PNG_SIGNATURE or data[:2] == _JPEG_SOI):
        raise ProtocolError(400, "the image content is not a PNG or JPEG file")
    size = image_size(bytes(data))
    if size is None or size[0] == 0 or size[1] == 0:
        raise ProtocolError(400, "the image content is a corrupt PNG or JPEG file")
    if size[0] * size[1] > max_pixels:
        raise ProtocolError(413, f"the image is {size[0]}x{size[1]} pixels, more than the limit of {max_pixels}")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ProtocolError(400, "the image content is a corrupt PNG or JPEG file")
    return np.ascontiguousarray(bgr[..., ::-1])


# ---------------------------------------------------------------- requests


def encode_request(images_png: list[bytes], max_results: int) -> dict:
    """The JSON body asking for ``max_results`` labels for each image.

    Args:
        images_png: encoded image files (PNG or JPEG bytes).
        max_results: labels wanted per image.

    Returns:
        ``{"requests": [{"image": {"content": BASE64}, "features": [{"type": "LABEL_DETECTION", "maxResults": k}]}, …]}``.
    """
    return {
        "requests": [
            {
                "image": {"content": base64.b64encode(png).decode("ascii")},
                "features": [{"type": FEATURE, "maxResults": int(max_results)}],
            }
            for png in images_png
        ]
    }


def decode_request(body: object, max_images: int, max_bytes: int) -> list[tuple[bytes | None, int | None, str | None]]:
    """Read a request body, one result per entry of ``requests``.

    Args:
        body: the parsed JSON body (any JSON value).
        max_images: the most entries one request may carry.
        max_bytes: the largest decoded image file accepted.

    Returns:
        Per entry ``(image bytes, maxResults or None when not given, None)``, or
        ``(None, None, message)`` for a malformed entry. A malformed whole body (not an object,
        no ``requests`` list, empty or more than ``max_images`` entries) raises
        :class:`ProtocolError` 400.
    """
    if not isinstance(body, dict):
        raise ProtocolError(400, 'the request body must be a JSON object {"requests": [...]}')
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise ProtocolError(400, 'the request body must have a "requests" list')
    if not requests:
        raise ProtocolError(400, 'the "requests" list is empty')
    if len(requests) > max_images:
        raise ProtocolError(400, f"too many images in one request: {len(requests)}, the limit is {max_images}")
    return [_decode_entry(entry, max_bytes) for entry in requests]


def _decode_entry(entry: object, max_bytes: int) -> tuple[bytes | None, int | None, str | None]:
    """One entry of ``requests`` → ``(bytes, maxResults, None)`` or ``(None, None, message)``."""
    try:
        return _image_content(entry, max_bytes), _max_results(entry), None
    except ProtocolError as exc:
        return None, None, exc.message


def _image_content(entry: object, max_bytes: int) -> bytes:
    if not isinstance(entry, dict):
        raise ProtocolError(400, "each request must be a JSON object")
    image = entry.get("image")
    if not isinstance(image, dict):
        raise ProtocolError(400, 'each request needs an "image" object')
    content = image.get("content")
    if not isinstance(content, str):
        what = "image.source is not supported" if "source" in image else "image.content is missing"
        raise ProtocolError(400, f"{what}; send the image as base64 in image.content")
    if len(content) > 4 * (max_bytes // 3 + 1) + 4:  # refuse before decoding a huge string
        raise ProtocolError(413, f"the image is larger than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(400, "image.content is not valid base64") from None
    if not data:
        raise ProtocolError(400, "image.content is empty")
    if len(data) > max_bytes:
        raise ProtocolError(413, f"the image is {len(data)} bytes, larger than the limit of {max_bytes}")
    return data


def _max_results(entry: dict) -> int | None:
    features = entry.get("features")
    if not isinstance(features, list) or not features:
        raise ProtocolError(400, f'each request needs a "features" list with {{"type": "{FEATURE}"}}')
    wanted = [f for f in features if isinstance(f, dict) and f.get("type") == FEATURE]
    if len(wanted) != len(features):
        raise ProtocolError(400, f"only the {FEATURE} feature is supported")
    k = wanted[0].get("maxResults")
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ProtocolError(400, f"maxResults must be a positive integer, got {one_line(repr(k))}")
    return k


# ---------------------------------------------------------------- responses


def encode_response(per_image: list[list[tuple[str, float | None]] | tuple[int, str]]) -> dict:
    """The JSON body answering one request.

    Args:
        per_image: per image either its labels ``[(name, probability or None), …]`` (the score
            is left out when None: ``labels`` and ``label`` modes) or an error ``(code, message)``.

    Returns:
        ``{"responses": [{"labelAnnotations": [{"description", "score"}, …]} | {"error": {"code", "message"}}, …]}``.
    """
    responses = []
    for item in per_image:
        if isinstance(item, tuple):
            code, message = item
            responses.append({"error": {"code": int(code), "message": str(message)}})
            continue
        annotations = []
        for name, score in item:
            annotation = {"description": str(name)}
            if score is not None:
                annotation["score"] = float(score)
            annotations.append(annotation)
        responses.append({"labelAnnotations": annotations})
    return {"responses": responses}


def decode_response(body: object, n: int) -> list[list[Label]]:
    """Read a response body answering ``n`` images.

    Args:
        body: the parsed JSON body (any JSON value).
        n: how many images the request carried.

    Returns:
        Per image its labels in the order given. Raises :class:`ProtocolError` when the body
        has the wrong shape or count (502), or when the server answered an error for an image
        (that error's code).
    """
    if not isinstance(body, dict) or not isinstance(body.get("responses"), list):
        raise ProtocolError(502, 'the answer is not a JSON object with a "responses" list')
    responses = body["responses"]
    if len(responses) != n:
        raise ProtocolError(502, f"the answer has {len(responses)} responses for {n} images")
    return [_decode_labels(i, r) for i, r in enumerate(responses)]


def _decode_labels(i: int, response: object) -> list[Label]:
    if not isinstance(response, dict):
        raise ProtocolError(502, f"response {i} is not a JSON object")
    if "error" in response:
        error = response["error"]
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
        detail = one_line(message if isinstance(message, str) else repr(error))
        raise ProtocolError(code, f"the server refused image {i}: {detail}")
    annotations = response.get("labelAnnotations", [])  # Cloud Vision leaves it out when no label applies
    if not isinstance(annotations, list):
        raise ProtocolError(502, f"response {i}: labelAnnotations is not a list")
    return [_decode_label(i, a) for a in annotations]


def _decode_label(i: int, annotation: object) -> Label:
    if not isinstance(annotation, dict) or not isinstance(annotation.get("description"), str):
        raise ProtocolError(502, f"response {i}: a label annotation has no description string")
    score = annotation.get("score")
    if score is None:
        return Label(annotation["description"], None)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:  # NaN fails too
        raise ProtocolError(502, f"response {i}: a label score is not a number in [0, 1]: {one_line(repr(score))}")
    return Label(annotation["description"], float(score))
