"""Drawing a sheet with reportlab: tiles as lossless images at exact size, ArUco markers as
vector cells, and what a person needs on the paper (id, date, instructions, scale bar)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physical_adv.manifest import attack_label
from physical_adv.markers import marker_cells

MM_TO_PT = 72.0 / 25.4
INSTRUCTIONS = "Print at 100 % / \"actual size\" (no \"fit to page\"), on matte paper if possible. Check the 100 mm bar with a ruler."


def _pt(v: float) -> float:
    return v * MM_TO_PT


def draw_marker(c, marker_id: int, centre_mm: tuple[float, float], size_mm: float, page_h_mm: float, dictionary: str) -> None:
    """Draw one marker as filled rectangles, one per horizontal run of black cells (no seams
    inside a run); the page behind it is white, which is its quiet zone."""
    cells = marker_cells(marker_id, dictionary)
    k = cells.shape[0]
    cell = size_mm / k
    x0, y0 = centre_mm[0] - size_mm / 2, centre_mm[1] - size_mm / 2
    for r in range(k):
        row = cells[r]
        col = 0
        while col < k:
            if not row[col]:
                col += 1
                continue
            start = col
            while col < k and row[col]:
                col += 1
            x, y_top = x0 + start * cell, y0 + r * cell
            c.rect(_pt(x), _pt(page_h_mm - y_top - cell), _pt((col - start) * cell), _pt(cell), stroke=0, fill=1)


def draw_fitted_line(c, text: str, centre_x_mm: float, baseline_mm: float, width_mm: float, size: float = 6.5) -> None:
    """Draw ``text`` centred at ``centre_x_mm``, its font shrunk so that it spans at most
    ``width_mm`` (the tile's width: it never reaches the markers' quiet zone)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    size = min(size, size * _pt(width_mm) * 0.95 / max(1e-6, stringWidth(text, "Helvetica", size)))
    c.setFont("Helvetica", size)
    c.drawCentredString(_pt(centre_x_mm), _pt(baseline_mm), text)


def draw_scale_bar(c, x_mm: float, y_mm: float, page_h_mm: float) -> None:
    """A 100 mm bar with 10 mm ticks (5 mm half ticks) and its label; ``y_mm`` is the bar's top."""
    c.setLineWidth(0.4)
    c.setFillColorRGB(0, 0, 0)
    c.rect(_pt(x_mm), _pt(page_h_mm - y_mm - 1.0), _pt(100.0), _pt(1.0), stroke=0, fill=1)
    for i in range(21):
        length = 4.0 if i % 2 == 0 else 2.5
        xi = x_mm + i * 5.0
        c.line(_pt(xi), _pt(page_h_mm - y_mm), _pt(xi), _pt(page_h_mm - y_mm - 1.0 - length))
        if i % 4 == 0:
            c.setFont("Helvetica", 6)
            c.drawCentredString(_pt(xi), _pt(page_h_mm - y_mm - 1.0 - length - 2.8), f"{i * 5}")
    c.setFont("Helvetica", 7)
    c.drawString(_pt(x_mm + 103.0), _pt(page_h_mm - y_mm - 2.0), "100 mm: measure this bar to check the print scale")


def draw_chart(c, chart: dict, page_h_mm: float) -> None:
    """The calibration chart: each patch a filled square of its RGB, and a caption above."""
    x, y, w, _ = chart["bbox_mm"]
    for patch in chart["patches"]:
        px, py, pw, ph = patch["bbox_mm"]
        c.setFillColorRGB(*(v / 255 for v in patch["rgb"]))
        c.rect(_pt(px), _pt(page_h_mm - py - ph), _pt(pw), _pt(ph), stroke=0, fill=1)
    c.setFillColorRGB(0, 0, 0)
    c.setFont("Helvetica", 6.5)
    c.drawString(_pt(x), _pt(page_h_mm - y + 1.2), f"colour calibration chart, {len(chart['patches'])} patches "
                 "(physical-adv calibrate): keep it in view and unobstructed")


def write_pdf(path: Path, manifest: dict, images: dict[str, np.ndarray], template, title: str) -> None:
    """Write the PDF for ``manifest`` (tiles and markers already placed) to ``path``.

    Args:
        images: tile id → ``(H, W, 3)`` uint8 RGB, embedded losslessly at its own pixels.
    """
    from PIL import Image
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    w_mm, h_mm = manifest["page"]["size_mm"]
    c = canvas.Canvas(str(path), pagesize=(_pt(w_mm), _pt(h_mm)), invariant=1)
    c.setTitle(title)
    c.setSubject(f"physical-adv attack sheet {manifest['sheet_id']}")
    c.setKeywords(["physical-adv", manifest["sheet_id"], manifest["aruco_dictionary"]])
    c.setCreator("physical-adv")
    c.setViewerPreference("PrintScaling", "None")
    date = manifest["created"][:10]
    for page in range(1, manifest["pages"] + 1):
        c.setFillColorRGB(0, 0, 0)
        c.setFont("Helvetica-Bold", 11)
        top = template.margin_mm
        c.drawString(_pt(template.margin_mm), _pt(h_mm - top - 5), f"physical-adv sheet {manifest['sheet_id']}   page {page}/{manifest['pages']}   {date}")
        c.setFont("Helvetica", 7.5)
        c.drawString(_pt(template.margin_mm), _pt(h_mm - top - 10), INSTRUCTIONS)
        for tile in (t for t in manifest["tiles"] if t["page"] == page):
            x, y, tw, th = tile["bbox_mm"]
            img = Image.fromarray(images[tile["tile_id"]], "RGB")
            c.drawImage(ImageReader(img), _pt(x), _pt(h_mm - y - th), _pt(tw), _pt(th))
            c.setFont("Helvetica", 6.5)
            c.setFillColorRGB(0, 0, 0)
            if tile["kind"] == "clean":
                label = f"{tile['tile_id']}  clean control  {tile['true_class']}"
            else:
                goal = f"{tile['true_class']} -> {tile['target_class']}" if tile["target_class"] else f"not {tile['true_class']}"
                label = f"{tile['tile_id']}  ADV  {goal}"
            label_y = y + th + template.quiet_mm + template.marker_mm / 2
            c.drawCentredString(_pt(x + tw / 2), _pt(h_mm - label_y - 1.0), label)
            if tile.get("blackbox"):  # a second line: made by queries, and how many
                draw_fitted_line(c, attack_label(tile), x + tw / 2, h_mm - label_y - 3.8, tw)
        for marker in (m for m in manifest["markers"] if m["page"] == page):
            draw_marker(c, marker["id"], marker["center_mm"], marker["size_mm"], h_mm, manifest["aruco_dictionary"])
        chart = manifest.get("calibration")
        if chart and chart["page"] == page:
            draw_chart(c, chart, h_mm)
        draw_scale_bar(c, template.margin_mm, h_mm - template.margin_mm - template.footer_mm + 6.0, h_mm)
        c.showPage()
    c.save()
