"""Sheets: exact physical placement of markers and tiles, lossless images, clean failures."""

import json

import cv2
import numpy as np
import pytest

from physical_adv.attack.runner import AttackConfig, run_attack
from helpers import assert_one_line_error, run_cli
from physical_adv.markers import detect
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.sheet.render import render_pages

DPI = 600
PX_PER_MM = DPI / 25.4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    for name, extra in (("stop", {}), ("yield", {"target": "no entry", "patch": "circle"})):
        cfg = AttackConfig(source=f"sign:{name}", out=root / name, steps=2, samples=4, eval_samples=10, texture_size=256, device="cpu", **extra)
        out.append(str(run_attack(cfg, show_progress=False).out))
    return out


@pytest.fixture(scope="module", params=["a4", "letter"])
def sheet(request, runs, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"sheet-{request.param}") / "s.pdf"
    return make_sheet(SheetConfig(runs=tuple(runs), out=out, template=request.param))


@pytest.fixture(scope="module")
def page600(sheet):
    return render_pages(sheet.pdf, DPI)[0]


def test_manifest_has_the_documented_shape(sheet):
    m = json.loads(sheet.manifest_path.read_text())
    assert m["schema"] == 1 and m["pages"] == 1 and m["aruco_dictionary"].startswith("DICT_")
    assert {"sheet_id", "created", "page", "markers", "tiles"} <= set(m)
    kinds = [t["kind"] for t in m["tiles"]]
    assert kinds == ["adversarial", "clean", "adversarial", "clean"]
    for t in m["tiles"]:
        assert {"tile_id", "page", "kind", "run", "model", "true_class", "target_class", "bbox_mm", "marker_ids", "image_sha256"} <= set(t)
        assert len(t["marker_ids"]) == 4
    ids = [mk["id"] for mk in m["markers"]]
    assert len(ids) == len(set(ids)) == 16
    assert m["tiles"][2]["target_class"] == "no entry" and m["tiles"][0]["target_class"] is None


def test_page_size_is_the_templates(sheet):
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(sheet.pdf))
    w_pt, h_pt = pdf[0].get_size()
    w_mm, h_mm = sheet.manifest["page"]["size_mm"]
    assert abs(w_pt / 72 * 25.4 - w_mm) < 0.05 and abs(h_pt / 72 * 25.4 - h_mm) < 0.05
    pdf.close()


def test_every_marker_is_where_the_manifest_says_within_0_3_mm(sheet, page600):
    found = {d.marker_id: d for d in detect(page600)}
    for marker in sheet.manifest["markers"]:
        d = found.get(marker["id"])
        assert d is not None, f"marker {marker['id']} not detected"
        centre_mm = (d.centre + 0.5) / PX_PER_MM  # pixel centres are at integer + 0.5 of the page's mm grid
        assert np.abs(centre_mm - np.array(marker["center_mm"])).max() < 0.3, (marker, centre_mm)
        sides = np.linalg.norm(np.roll(d.corners, -1, 0) - d.corners, axis=1) / PX_PER_MM
        # detected corners sit on the outer black border's edge
        assert np.abs(sides - marker["size_mm"]).max() < 0.3, (marker["id"], sides)


def test_no_embedded_image_is_lossy(sheet):
    import pypdfium2
    import pypdfium2.raw as raw

    pdf = pypdfium2.PdfDocument(str(sheet.pdf))
    images = [obj for obj in pdf[0].get_objects() if obj.type == raw.FPDF_PAGEOBJ_IMAGE]
    assert len(images) == 4
    for obj in images:
        filters = obj.get_filters()
        assert not {"DCTDecode", "JPXDecode"} & set(filters), filters
        w, h = obj.get_px_size()
        assert (w, h) == (256, 256)  # embedded at its own resolution
    pdf.close()


def test_tile_cut_back_out_matches_the_run_image(sheet, page600):
    for tile in sheet.manifest["tiles"]:
        x, y, w, h = (v * PX_PER_MM for v in tile["bbox_mm"])
        name = "adversarial.png" if tile["kind"] == "adversarial" else "clean.png"
        src = cv2.imread(f"{tile['run']}/{name}")
        # map each page pixel centre inside the bbox back to the source image exactly
        k = src.shape[1] / w
        x0, y0 = int(np.ceil(x)) + 1, int(np.ceil(y)) + 1
        cw, ch = int(w) - 3, int(h) - 3
        crop = page600[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
        m = np.float32([[k, 0, (x0 + 0.5 - x) * k - 0.5], [0, k, (y0 + 0.5 - y) * k - 0.5]])
        expected = cv2.warpAffine(src, m, (cw, ch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP).astype(np.float32)
        # the viewer's own upsampling kernel is not ours: compare at the scale of one source pixel
        sigma = 1 / k
        mad = np.abs(cv2.GaussianBlur(crop, (0, 0), sigma) - cv2.GaussianBlur(expected, (0, 0), sigma)).mean()
        assert mad < 2.0, (tile["tile_id"], mad)  # grey levels, i.e. under 2/255


def test_markers_survive_a_small_tilted_photo(sheet):
    """The sheet fills a third of a 720p frame (by area) and is tilted by 40° about its vertical axis."""
    page = render_pages(sheet.pdf, 200)[0]
    h, w = page.shape[:2]
    frame_w, frame_h = 1280, 720
    target_h = np.sqrt(frame_w * frame_h / 3 * h / w)
    target_w = target_h * w / h
    squeeze = np.cos(np.radians(40))
    cx, cy = frame_w / 2, frame_h / 2
    taper = 0.12  # far edge shorter, as perspective makes it
    dst = np.float32([
        [cx - target_w * squeeze / 2, cy - target_h / 2],
        [cx + target_w * squeeze / 2, cy - target_h * (1 - taper) / 2],
        [cx + target_w * squeeze / 2, cy + target_h * (1 - taper) / 2],
        [cx - target_w * squeeze / 2, cy + target_h / 2],
    ])
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    hom = cv2.getPerspectiveTransform(src, dst)
    small = cv2.resize(page, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    scale = np.diag([2.0, 2.0, 1.0]).astype(np.float64)
    frame = cv2.warpPerspective(small, hom @ scale, (frame_w, frame_h), flags=cv2.INTER_AREA, borderValue=(90, 110, 100))
    found = {d.marker_id for d in detect(frame)}
    expected = {m["id"] for m in sheet.manifest["markers"]}
    assert expected <= found, sorted(expected - found)




def assert_clean_failure(code, err, fragment, out):
    assert_one_line_error(code, err, fragment)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_missing_run_directory_fails_cleanly(capsys, tmp_path):
    out = tmp_path / "x.pdf"
    code, _, err = run_cli(capsys, "sheet", str(tmp_path / "nope"), "--out", str(out))
    assert_clean_failure(code, err, "run directory not found", out)


def test_invalid_run_directory_fails_cleanly(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "x.pdf"
    code, _, err = run_cli(capsys, "sheet", str(tmp_path / "empty"), "--out", str(out))
    assert_clean_failure(code, err, "not an attack run directory", out)


def test_unknown_template_lists_the_available_ones(capsys, runs, tmp_path):
    out = tmp_path / "x.pdf"
    code, _, err = run_cli(capsys, "sheet", runs[0], "--template", "a3-landscape", "--out", str(out))
    assert_clean_failure(code, err, "available: a4, letter", out)


def test_tiles_that_do_not_fit_fail_cleanly(capsys, runs, tmp_path):
    out = tmp_path / "x.pdf"
    code, _, err = run_cli(capsys, "sheet", runs[0], "--tile-mm", "250", "--out", str(out))
    assert_clean_failure(code, err, "smaller --tile-mm", out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("marker_mm, distance_mm, fragment", [
    (12, 1200, "12 mm markers look 14.1 px wide from 1200 mm"),  # the old default, from as far as the new one
    (18, 3000, "use marker_mm ≥ 38.4 or distance_mm ≤ 1408"),
])
def test_a_template_whose_markers_cannot_be_read_from_its_distance_fails_cleanly(capsys, runs, tmp_path, marker_mm,
                                                                                  distance_mm, fragment):
    template = tmp_path / "far.toml"
    template.write_text(f'page_mm = [210.0, 297.0]\nmarker_mm = {marker_mm}\ndistance_mm = {distance_mm}\n')
    out = tmp_path / "x.pdf"
    code, _, err = run_cli(capsys, "sheet", runs[0], "--template", str(template), "--out", str(out))
    assert_clean_failure(code, err, fragment, out)


def test_the_default_markers_are_readable_from_the_default_distance():
    from physical_adv.markers import MIN_MARKER_PX, marker_px
    from physical_adv.sheet.layout import load_template

    for name in ("a4", "letter"):
        t = load_template(name)
        assert marker_px(t.marker_mm, t.distance_mm) >= MIN_MARKER_PX


def test_many_runs_fill_several_pages_with_unique_markers(runs, tmp_path):
    sheet = make_sheet(SheetConfig(runs=tuple(runs * 3), out=tmp_path / "big.pdf", previews=False))
    assert sheet.manifest["pages"] == 3
    ids = [m["id"] for m in sheet.manifest["markers"]]
    assert len(ids) == len(set(ids)) == 48


def _outputs(pdf):
    """Every file a sheet named like ``pdf`` owns, with its bytes."""
    return {p.name: p.read_bytes() for p in pdf.parent.iterdir() if p.is_file() and p.name.startswith(pdf.stem)}


@pytest.fixture
def earlier_sheet(runs, tmp_path):
    """A sheet written once; the tests then write a different one (tiles of another size) over it."""
    pdf = tmp_path / "s.pdf"
    make_sheet(SheetConfig(runs=(runs[0],), out=pdf, controls=False))
    return pdf


def test_a_manifest_that_cannot_be_replaced_leaves_the_earlier_pdf_and_previews_untouched(runs, earlier_sheet):
    manifest = earlier_sheet.with_suffix(".json")
    manifest.unlink()
    manifest.mkdir()  # a folder stands where the new manifest must go
    (manifest / "keep").write_text("x")
    before = _outputs(earlier_sheet)
    with pytest.raises(IsADirectoryError):
        make_sheet(SheetConfig(runs=(runs[0],), out=earlier_sheet, controls=False, tile_mm=60))
    assert _outputs(earlier_sheet) == before
    assert sorted(p.name for p in earlier_sheet.parent.iterdir()) == ["s-page1.png", "s.json", "s.pdf"]


def test_a_failure_at_the_last_rename_puts_back_the_earlier_manifest_and_previews(runs, earlier_sheet, monkeypatch):
    import errno
    import os

    real_replace = os.replace

    def disk_full_at_the_pdf(src, dst):
        if str(dst) == str(earlier_sheet):  # the PDF moves last: everything else is already in place
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    before = _outputs(earlier_sheet)
    monkeypatch.setattr(os, "replace", disk_full_at_the_pdf)
    with pytest.raises(OSError, match="No space left"):
        make_sheet(SheetConfig(runs=(runs[0],), out=earlier_sheet, controls=False, tile_mm=60))
    monkeypatch.undo()
    assert _outputs(earlier_sheet) == before
    assert sorted(p.name for p in earlier_sheet.parent.iterdir()) == ["s-page1.png", "s.json", "s.pdf"]


def test_a_failing_preview_renderer_leaves_the_earlier_sheet_untouched(runs, earlier_sheet, monkeypatch):
    import physical_adv.sheet as sheet_module

    def renderer_out_of_memory(*args, **kwargs):
        raise MemoryError("pdfium ran out of memory")

    before = _outputs(earlier_sheet)
    monkeypatch.setattr(sheet_module, "render_pages", renderer_out_of_memory)
    with pytest.raises(MemoryError):
        make_sheet(SheetConfig(runs=(runs[0],), out=earlier_sheet, controls=False, tile_mm=60))
    assert _outputs(earlier_sheet) == before
    assert sorted(p.name for p in earlier_sheet.parent.iterdir()) == ["s-page1.png", "s.json", "s.pdf"]


def test_a_shorter_sheet_removes_the_previews_of_a_longer_one_of_the_same_name(runs, tmp_path):
    pdf = tmp_path / "s.pdf"
    make_sheet(SheetConfig(runs=tuple(runs * 3), out=pdf))
    assert {p.name for p in tmp_path.glob("s-page*.png")} == {"s-page1.png", "s-page2.png", "s-page3.png"}
    sheet = make_sheet(SheetConfig(runs=(runs[0],), out=pdf))
    assert sheet.manifest["pages"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-page1.png", "s.json", "s.pdf"]
    assert json.loads(pdf.with_suffix(".json").read_text())["sheet_id"] == sheet.manifest["sheet_id"]


def test_an_output_under_a_regular_file_is_one_line_error_naming_it(capsys, runs, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "sheet", runs[0], "--out", str(tmp_path / "notes.txt" / "s.pdf"))
    assert_one_line_error(code, err, str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


def test_an_output_pdf_that_is_a_folder_is_one_line_error_and_writes_nothing(capsys, runs, tmp_path):
    (tmp_path / "s.pdf").mkdir()
    code, _, err = run_cli(capsys, "sheet", runs[0], "--out", str(tmp_path / "s.pdf"))
    assert_one_line_error(code, err, "a folder stands where a file should be")
    assert str(tmp_path / "s.pdf") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pdf"]


def test_sheet_files_get_the_usual_permissions_not_the_temporaries(runs, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        sheet = make_sheet(SheetConfig(runs=(runs[0],), out=tmp_path / "s.pdf", controls=False))
    finally:
        os.umask(old)
    for path in (sheet.pdf, sheet.manifest_path, *sheet.previews):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # readable by a print server or a colleague


def test_a_full_disk_is_one_line_error_naming_the_file_being_written(capsys, runs, tmp_path, monkeypatch):
    import errno
    import os

    def disk_full(fd):  # what the kernel answers when the disk fills up while flushing
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    code, _, err = run_cli(capsys, "sheet", runs[0], "--out", str(tmp_path / "s.pdf"))
    assert_one_line_error(code, err, "the disk is full")
    assert ".json" in err and str(tmp_path) in err  # the manifest's write is the first to flush
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- black-box runs on a sheet (issue 11 item 4): the manifest and the page say how each tile was made ---------


@pytest.fixture(scope="module")
def blackbox_sheet(runs, tmp_path_factory):
    """A sheet of a tiny black-box NES sticker run (40 queries) beside a white-box run."""
    root = tmp_path_factory.mktemp("bb")
    cfg = AttackConfig(source="sign:stop", out=root / "bb", target="speed limit 80", patch="square", patch_area=0.1,
                       samples=4, eval_samples=10, texture_size=128, device="cpu", oracle="signs", budget=40)
    bb_run = run_attack(cfg, show_progress=False)
    return bb_run.record, make_sheet(SheetConfig(runs=(str(bb_run.out), runs[0]), out=root / "s.pdf"))


def test_the_manifest_records_each_tiles_blackbox_method_oracle_and_queries(blackbox_sheet):
    record, sheet = blackbox_sheet
    tiles = json.loads(sheet.manifest_path.read_text())["tiles"]
    bb = tiles[0]["blackbox"]
    assert bb["method"] == "nes" and bb["queries"] == record["blackbox"]["queries"] == 40
    assert bb["budget"] == 40 and bb["oracle"]["spec"] == "signs" and bb["oracle"]["mode"] == "scores"
    assert [t["blackbox"] for t in tiles[1:]] == [None, None, None]  # its clean control, the white-box run and its control


def test_the_page_labels_the_blackbox_tile_with_its_method_and_queries(blackbox_sheet):
    import pypdfium2

    _, sheet = blackbox_sheet
    pdf = pypdfium2.PdfDocument(str(sheet.pdf))
    text = pdf[0].get_textpage().get_text_range()
    pdf.close()
    assert text.count("black-box NES, 40 queries") == 1  # the black-box tile only, not its control or the white-box run
    # the label does not cost a marker: every tile is still located on the rendered page
    found = detect(render_pages(sheet.pdf, 200)[0], name=sheet.manifest["aruco_dictionary"])
    assert {mk["id"] for mk in sheet.manifest["markers"]} <= found.ids()


def test_a_manifest_from_before_the_blackbox_entry_still_loads(blackbox_sheet, tmp_path):
    from physical_adv.manifest import attack_label, read_manifest

    _, sheet = blackbox_sheet
    m = json.loads(sheet.manifest_path.read_text())
    assert [attack_label(t) for t in m["tiles"]] == ["black-box NES, 40 queries", None, "white-box", None]
    for t in m["tiles"]:
        del t["blackbox"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(m))
    assert [attack_label(t) for t in read_manifest(old)["tiles"]] == ["not recorded", None, "not recorded", None]


def test_a_malformed_blackbox_entry_is_a_clean_error(blackbox_sheet, tmp_path):
    from physical_adv.errors import UserError
    from physical_adv.manifest import read_manifest

    _, sheet = blackbox_sheet
    m = json.loads(sheet.manifest_path.read_text())
    m["tiles"][0]["blackbox"] = {"method": "nes", "queries": "many"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(m))
    with pytest.raises(UserError, match="blackbox entry"):
        read_manifest(bad)
