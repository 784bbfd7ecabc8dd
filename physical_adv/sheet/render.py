"""Rendering sheet PDFs back to pixels with pypdfium2 (previews, tests, the simulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def render_pages(pdf_path: str | Path, dpi: float) -> list[np.ndarray]:
    """Every page of ``pdf_path`` at ``dpi`` as ``(H, W, 3)`` uint8 **BGR** arrays (OpenCV's order)."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(pdf_path))
    try:
        pages = []
        for i in range(len(pdf)):
            bitmap = pdf[i].render(scale=dpi / 72.0)
            pages.append(np.ascontiguousarray(bitmap.to_numpy()[..., :3]))
        return pages
    finally:
        pdf.close()
