"""Differentiable JPEG (baseline, 4:2:0) in a handful of batched tensor ops.

The codec is the standard one: RGB → YCbCr, 2×2 chroma subsampling, 8×8 DCT as two
matrix products per block, quantisation with the IJG tables scaled by quality, and back.
Rounding is made differentiable with the cubic approximation of Shin & Song (2017),
``round(x) + (x − round(x))³``, whose value is exactly the rounded one and whose gradient
is ``3 (x − round(x))²`` — not zero, unlike plain rounding.

Compared with ``kornia.enhance.jpeg_codec_differentiable``, which we measured at about
0.6 s for 32 images of 64 px forward+backward on two cores, this costs a few
milliseconds: every block of every image goes through one batched ``matmul``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_CHROMA = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32

_RGB_TO_YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]


@functools.lru_cache(maxsize=16)
def _constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB in [0, 1] → YCbCr in [0, 255], its inverse and the 64×64 block DCT, built once per
    device and dtype (the ×255 lives in the colour matrices, saving two passes over the images)."""
    m = torch.tensor(_RGB_TO_YCC, dtype=torch.float64)
    d = _dct_matrix("cpu", torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (m * 255.0, torch.linalg.inv(m) / 255.0, torch.kron(d, d)))


def _dct_matrix(device, dtype) -> torch.Tensor:
    d = torch.zeros(8, 8, dtype=torch.float64)
    for k in range(8):
        for n in range(8):
            d[k, n] = math.cos(math.pi * (2 * n + 1) * k / 16) * (math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8))
    return d.to(device=device, dtype=dtype)


def quality_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IJG quantisation tables ``(N, 8, 8)`` (luma, chroma) for qualities ``(N,)`` in [1, 100]."""
    q = quality.clamp(1, 100).to(torch.float32)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    tables = []
    for base in (_LUMA, _CHROMA):
        b = torch.tensor(base, dtype=torch.float32, device=q.device).view(1, 8, 8)
        tables.append(torch.floor((b * scale.view(-1, 1, 1) + 50) / 100).clamp(1, 255))
    return tables[0], tables[1]


def diff_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with a useful gradient (Shin & Song 2017): exact value, cubic surrogate slope."""
    r = torch.round(x).detach()
    if not (torch.is_grad_enabled() and x.requires_grad):
        return r
    return r + (x - r) ** 3 - (x.detach() - r) ** 3


def _blocks_roundtrip(plane: torch.Tensor, table: torch.Tensor, dct2: torch.Tensor) -> torch.Tensor:
    """DCT, quantise, dequantise and inverse-DCT every 8×8 block of ``plane`` ``(N, C, H, W)``.

    ``dct2`` is the 64×64 Kronecker product of the 1-D DCT with itself, so the 2-D DCT of
    all blocks is one GEMM on ``(blocks, 64)`` instead of millions of tiny matmuls.
    """
    n, c, h, w = plane.shape
    blocks = plane.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, -1, 64)
    t = table.reshape(n, 1, 64)
    # quantisation folded into per-image matrices: DCT then ÷ table, and × table then inverse DCT
    coef = diff_round(torch.bmm(blocks, dct2.T / t))
    blocks = torch.bmm(coef, t.transpose(1, 2) * dct2).reshape(n, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5)
    return blocks.reshape(n, c, h, w)


def jpeg(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Compress and decompress ``images`` with per-image JPEG ``quality``.

    Args:
        images: ``(N, 3, H, W)`` RGB in [0, 1].
        quality: ``(N,)`` JPEG qualities in [1, 100].

    Returns:
        ``(N, 3, H, W)`` in [0, 1], differentiable with respect to ``images``.
    """
    n, _, h, w = images.shape
    ph, pw = (-h) % 16, (-w) % 16
    x = F.pad(images, (0, pw, 0, ph), mode="replicate") if ph or pw else images
    m, m_inv, dct2 = _constants(x.device, x.dtype)
    hh, ww = x.shape[-2:]
    # colour conversions as (3×3) @ (3, pixels) products: no permuted copies as with einsum
    ycc = torch.matmul(m, x.reshape(n, 3, hh * ww)).view(n, 3, hh, ww)
    luma = ycc[:, :1] - 128.0
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    qy, qc = quality_tables(quality.to(x.device))
    luma = _blocks_roundtrip(luma, qy.to(x.dtype), dct2)
    # Decoders interpolate chroma ("fancy upsampling"); bilinear is close to libjpeg's.
    chroma = F.interpolate(_blocks_roundtrip(chroma, qc.to(x.dtype), dct2), scale_factor=2, mode="bilinear", align_corners=False)
    # back to RGB without concatenating: m_inv[:, 0]·(luma + 128) + m_inv[:, 1:] @ chroma
    luma_col = m_inv[:, :1].reshape(1, 3, 1)
    rgb = torch.addcmul(128.0 * luma_col, luma.reshape(n, 1, hh * ww), luma_col)
    rgb = torch.baddbmm(rgb, m_inv[:, 1:].expand(n, 3, 2), chroma.reshape(n, 2, hh * ww)).view(n, 3, hh, ww)
    return rgb[:, :, :h, :w].clamp(0, 1)
