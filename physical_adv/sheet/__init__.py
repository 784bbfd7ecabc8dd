"""``physical-adv sheet``: attack runs → a printable PDF with markers, and its manifest.

The manifest (``NAME.json``, schema 1) is everything capture needs; coordinates are in
millimetres from each page's top-left corner, x to the right, y down. Each adversarial tile
records whether its run was black-box, by which method and at what query count
(``blackbox``, see :mod:`physical_adv.manifest`), and its label on the page says so.

Each tile's ``model`` is the model that scores it (capture classifies it with that one);
``attacked_model`` is the model its run was optimised against. They differ when the sheet
is made with ``--model SPEC`` — a transfer sheet: e.g. stickers made on a substitute,
printed and scored against the real target.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from physical_adv.artifacts import atomic_write_bytes, commit_files, read_json, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.images import load_image
from physical_adv.manifest import blackbox_entry
from physical_adv.markers import DEFAULT_DICTIONARY, dictionary_size
from physical_adv.sheet.chart import layout_chart
from physical_adv.sheet.layout import Template, load_template, place
from physical_adv.sheet.render import render_pages
from physical_adv.sheet.writer import write_pdf

SCHEMA = 1
PREVIEW_DPI = 100


@dataclass(frozen=True)
class SheetConfig:
    runs: tuple[str, ...]
    out: Path = Path("sheet.pdf")
    template: str = "a4"
    tile_mm: float | None = None
    controls: bool = True
    dictionary: str = DEFAULT_DICTIONARY
    previews: bool = True
    model: str | None = None  # score every tile with this model instead of the one its run attacked
    calibration: bool = True  # a colour calibration chart below the tiles of the first page with room
    calibration_only: bool = False  # a sheet holding only a page-sized chart, framed by markers

    def __post_init__(self) -> None:
        if self.calibration_only and self.runs:
            raise ValueError("a --calibration-only sheet takes no run directories")
        if self.calibration_only and not self.calibration:
            raise ValueError("--calibration-only and --no-calibration contradict each other")
        if not self.runs and not self.calibration_only:
            raise ValueError("give at least one run directory (or --calibration-only for a chart-only sheet)")
        if Path(self.out).suffix.lower() != ".pdf":
            raise ValueError(f"--out must end in .pdf, got {self.out}")
        if self.tile_mm is not None and not 10 <= self.tile_mm <= 1000:
            raise ValueError(f"tile size must be in [10, 1000] mm, got {self.tile_mm:g}")


@dataclass
class Sheet:
    pdf: Path
    manifest_path: Path
    manifest: dict
    previews: list[Path] = field(default_factory=list)


def _expand_studies(runs: tuple[str, ...]) -> list[str]:
    """Run directories, each study folder (``sweep --out``) replaced by its finished runs in plan order."""
    out = []
    for run in runs:
        if (Path(run) / "study.json").is_file():
            from physical_adv.sweep.study import study_runs

            found = study_runs(Path(run))
            if not found:
                raise UserError(f"study {run} has no finished runs yet (sweep --status {run} says how far it is)")
            out.extend(str(p) for p in found)
        else:
            out.append(run)
    return out


def _read_run(run: str) -> dict:
    path = Path(run)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    record_path = path / "attack.json"
    if not record_path.is_file():
        raise UserError(f"{path} is not an attack run directory (no attack.json)")
    record = read_json(record_path, "attack record")
    for key in ("model", "true_class", "class_names"):
        if key not in record:
            raise UserError(f"{record_path} lacks {key!r}; is it from physical-adv attack?")
    images = {}
    for name in ("adversarial.png", "clean.png"):
        if not (path / name).is_file():
            raise UserError(f"{path} lacks {name}")
        images[name] = load_image(path / name)
        images[name + ":sha256"] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    return {"path": str(path), "record": record, **images}


def make_sheet(cfg: SheetConfig) -> Sheet:
    """Lay out the runs of ``cfg`` and write ``OUT.pdf``, ``OUT.json`` and page previews ``OUT-pageN.png``.

    All or nothing: the files are built in temporaries and renamed into place together, so a
    failure leaves an earlier sheet of the same name exactly as it was; previews of an earlier,
    longer sheet of that name are removed with the same commit.

    Args:
        cfg: the runs, the template and where to write.

    Returns:
        The paths written and the manifest.
    """
    template: Template = load_template(cfg.template, cfg.tile_mm)
    if cfg.calibration_only:
        return _write_outputs(cfg, _chart_manifest(cfg, template), {}, template)
    runs = [_read_run(r) for r in _expand_studies(cfg.runs)]
    tiles_src = []
    for run in runs:
        tiles_src.append((run, "adversarial"))
        if cfg.controls:
            tiles_src.append((run, "clean"))
    capacity = dictionary_size(cfg.dictionary) // 4
    if len(tiles_src) > capacity:
        raise UserError(f"{len(tiles_src)} tiles need {4 * len(tiles_src)} markers but {cfg.dictionary} has "
                        f"{4 * capacity}; split the runs over several sheets")
    slots = place(template, len(tiles_src))
    digest = hashlib.sha256()
    for run, kind in tiles_src:
        digest.update(run[f"{kind}.png:sha256"].encode())
    # the whole layout: the same runs on another template, tile or marker size are another sheet
    digest.update(json.dumps([template.__dict__, cfg.dictionary, cfg.calibration], sort_keys=True, default=list).encode())
    sheet_id = digest.hexdigest()[:8]
    scorer = _scoring_model(cfg.model, runs)
    digital = _digital_predictions(tiles_src, scorer)
    tiles, markers, images, models = [], [], {}, {}
    for n, ((run, kind), slot) in enumerate(zip(tiles_src, slots)):
        rec = run["record"]
        spec = cfg.model or rec["model"]["spec"]
        tile_id = f"{n + 1:02d}"
        ids = list(range(4 * n, 4 * n + 4))
        img = run[f"{kind}.png"]
        tiles.append({
            "tile_id": tile_id, "page": slot.page, "kind": kind, "run": run["path"],
            "model": spec, "attacked_model": rec["model"]["spec"],
            "true_class": rec["true_class"], "target_class": rec.get("target_class"),
            "bbox_mm": list(slot.tile), "marker_ids": ids, "image_sha256": run[f"{kind}.png:sha256"],
            "image_px": [int(img.shape[1]), int(img.shape[0])],
            "dpi": round(img.shape[1] / (slot.tile[2] / 25.4), 1),
            "threat": rec.get("threat"), "eot": rec.get("config", {}).get("eot"),
            "digital": digital[n],
            "blackbox": blackbox_entry(rec) if kind == "adversarial" else None,
        })
        for marker_id, centre in zip(ids, slot.markers):
            markers.append({"id": marker_id, "page": slot.page, "center_mm": list(centre), "size_mm": template.marker_mm})
        images[tile_id] = img
        models[spec] = ({"class_names": list(scorer.class_names), "input_size": scorer.input_size} if scorer is not None
                        else {"class_names": rec["class_names"], "input_size": rec["model"].get("input_size")})
    chart = _chart(template, slots) if cfg.calibration else None
    manifest = {
        "schema": SCHEMA, "sheet_id": sheet_id, "created": utc_now(),
        "page": {"size_mm": list(template.page_mm)}, "pages": max(s.page for s in slots),
        "aruco_dictionary": cfg.dictionary, "marker_layout": "tile corners, order TL TR BR BL",
        "template": {k: (list(v) if isinstance(v, tuple) else v) for k, v in template.__dict__.items()},
        "markers": markers, "tiles": tiles, "models": models, "calibration": chart, "versions": software_versions(),
    }
    return _write_outputs(cfg, manifest, images, template)


def _chart_manifest(cfg: SheetConfig, template: Template) -> dict:
    """A one-page sheet of only the calibration chart, filling the page inside a frame of
    markers (one at each corner and at the middle of each side) that locate it."""
    w, h = template.page_mm
    x0, y0 = template.margin_mm, template.margin_mm + template.header_mm
    x1, y1 = w - template.margin_mm, h - template.margin_mm - template.footer_mm
    m = template.marker_mm
    xs, ys = (x0 + m / 2, (x0 + x1) / 2, x1 - m / 2), (y0 + m / 2, (y0 + y1) / 2, y1 - m / 2)
    centres = [(x, y) for y in ys for x in xs if (x, y) != (xs[1], ys[1])]
    markers = [{"id": i, "page": 1, "center_mm": [round(x, 4), round(y, 4)], "size_mm": m} for i, (x, y) in enumerate(centres)]
    inset = m + template.quiet_mm
    chart = layout_chart((x0 + inset, y0 + inset, x1 - x0 - 2 * inset, y1 - y0 - 2 * inset), 1)
    if chart is None:
        raise UserError(f"template {template.name!r} leaves no room for a calibration chart")
    digest = hashlib.sha256(json.dumps(["calibration-only", template.__dict__, cfg.dictionary], sort_keys=True,
                                       default=list).encode())
    return {"schema": SCHEMA, "sheet_id": digest.hexdigest()[:8], "created": utc_now(), "page": {"size_mm": [w, h]},
            "pages": 1, "aruco_dictionary": cfg.dictionary, "marker_layout": "a frame around the calibration chart",
            "template": {k: (list(v) if isinstance(v, tuple) else v) for k, v in template.__dict__.items()},
            "markers": markers, "tiles": [], "models": {}, "calibration": chart, "versions": software_versions()}


def _chart(template: Template, slots: list) -> dict | None:
    """The calibration chart in the band between the lowest tile block and the footer of the
    first page with room for it (:func:`physical_adv.sheet.chart.layout_chart`); ``None`` when
    no page has room."""
    w, h = template.page_mm
    bottom = h - template.margin_mm - template.footer_mm
    for page in sorted({s.page for s in slots}):
        lowest = max(s.tile[1] + s.tile[3] + template.quiet_mm + template.marker_mm for s in slots if s.page == page)
        chart = layout_chart((template.margin_mm, lowest + 2.0, w - 2 * template.margin_mm, bottom - lowest - 4.0), page)
        if chart is not None:
            return chart
    return None


def _scoring_model(spec: str | None, runs: list[dict]):
    """The ``--model`` that scores every tile, loaded, after checking it knows each run's classes;
    ``None`` when each tile is scored by the model its run attacked."""
    if spec is None:
        return None
    from physical_adv.classes import class_index
    from physical_adv.models import load_model

    model = load_model(spec, "cpu")
    for run in runs:
        rec = run["record"]
        for what in ("true", "target"):
            name = rec.get(f"{what}_class")
            if name is not None:
                class_index(model.class_names, name, what=f"run {run['path']}'s {what}", owner=f"--model {spec}")
    return model


def _digital_predictions(tiles_src: list, scorer=None) -> list[dict | None]:
    """Each tile's top-5 on its own image, digitally (area-downsampled to the model input), by the
    model that scores it: the baseline that Kurakin et al.'s destruction rate compares photographs
    against."""
    import torch

    from physical_adv.classify import top_k
    from physical_adv.images import to_batch
    from physical_adv.models import load_model

    out: list[dict | None] = []
    loaded = {}
    for run, kind in tiles_src:
        rec = run["record"]
        spec = rec["model"]["spec"]
        try:
            model = scorer or loaded.get(spec) or loaded.setdefault(spec, load_model(
                spec, "cpu", classes=rec["class_names"], input_size=rec["model"].get("input_size")))
        except UserError:
            out.append(None)  # the model is not available here; report will say so
            continue
        with torch.no_grad():
            probs = torch.softmax(model(to_batch(run[f"{kind}.png"], model.input_size)), 1)
        top = top_k(probs, model.class_names, 5)[0]
        out.append({"pred": top[0]["class"], "top5": [t["class"] for t in top]})
    return out


def _write_outputs(cfg: SheetConfig, manifest: dict, images: dict, template: Template) -> Sheet:
    """Build the PDF, manifest and previews in a temporary folder, then move them into place together:
    a failure at any point leaves the previous outputs exactly as they were."""
    pdf = Path(cfg.out)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    manifest_path = pdf.with_suffix(".json")
    previews = [preview_path(pdf, p) for p in range(1, manifest["pages"] + 1)] if cfg.previews else []
    with tempfile.TemporaryDirectory(prefix=f".{pdf.stem}.", dir=pdf.parent) as tmp:
        staged = {path: Path(tmp) / path.name for path in (*previews, manifest_path, pdf)}
        write_pdf(staged[pdf], manifest, images, template, title=f"physical-adv sheet {manifest['sheet_id']}")
        atomic_write_bytes(staged[manifest_path], (json.dumps(manifest, indent=2) + "\n").encode())
        for path, page in zip(previews, render_pages(staged[pdf], PREVIEW_DPI) if previews else []):
            ok, buf = cv2.imencode(".png", page)
            if not ok:
                raise RuntimeError(f"OpenCV could not encode the preview {path}")
            atomic_write_bytes(staged[path], buf.tobytes())
        # the PDF moves last, so that a PDF never stands beside an older manifest
        commit_files([(src, dst) for dst, src in staged.items()], remove=_stale_previews(pdf, previews))
    return Sheet(pdf, manifest_path, manifest, previews)


def preview_path(pdf: Path, page: int) -> Path:
    """Where the PNG preview of ``page`` (from 1) of the sheet ``pdf`` goes: ``NAME-pageN.png``."""
    return pdf.with_name(f"{pdf.stem}-page{page}.png")


def is_preview(pdf: Path, path: Path) -> bool:
    """Whether ``path`` is named as a page preview of the sheet ``pdf`` (``NAME-pageN.png`` beside it)."""
    return Path(path).parent == Path(pdf).parent and re.fullmatch(
        re.escape(Path(pdf).stem) + r"-page[0-9]+\.png", Path(path).name) is not None


def _stale_previews(pdf: Path, keep: list[Path]) -> list[Path]:
    """Previews of an earlier sheet of the same name that the new one does not overwrite."""
    return [p for p in pdf.parent.iterdir() if is_preview(pdf, p) and p not in keep and p.is_file()]
