"""Sheet templates and the placement of tiles and markers, in millimetres from the page's
top-left corner (x to the right, y down) — the manifest's coordinate system."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from physical_adv.artifacts import read_named_toml
from physical_adv.errors import UserError
from physical_adv.markers import readable_problem

# Installed from a wheel the templates ship inside the package; in a source checkout
# (the editable install) they are the repository's top-level print_templates/.
_PACKAGED = Path(__file__).resolve().parents[1] / "print_templates"
TEMPLATE_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "print_templates"


@dataclass(frozen=True)
class Template:
    """A sheet layout (see ``print_templates/*.toml``)."""

    name: str
    page_mm: tuple[float, float]
    margin_mm: float = 12.0
    header_mm: float = 20.0
    footer_mm: float = 20.0
    tile_mm: float = 50.0
    marker_mm: float = 18.0
    quiet_mm: float = 2.0
    gap_mm: float = 6.0
    distance_mm: float = 1200.0  # the farthest the camera will be; the markers must be readable from there
    description: str = ""

    def __post_init__(self) -> None:
        w, h = self.page_mm
        if not (50 <= w <= 2000 and 50 <= h <= 2000):
            raise ValueError(f"page size must be within 50–2000 mm, got {w} x {h}")
        for name in ("margin_mm", "header_mm", "footer_mm", "quiet_mm", "gap_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0")
        if self.tile_mm < 10:
            raise ValueError(f"tile_mm must be at least 10 mm, got {self.tile_mm:g}")
        if self.marker_mm < 4:
            raise ValueError(f"marker_mm must be at least 4 mm, got {self.marker_mm:g}")
        if not 100 <= self.distance_mm <= 100_000:
            raise ValueError(f"distance_mm must be in [100, 100000], got {self.distance_mm:g}")
        problem = readable_problem(self.marker_mm, self.distance_mm)
        if problem:
            raise ValueError(problem)

    @property
    def block_mm(self) -> float:
        """Side of a tile with its four corner markers."""
        return self.tile_mm + 2 * (self.quiet_mm + self.marker_mm)


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.toml"))


def load_template(name_or_path: str | Path, tile_mm: float | None = None) -> Template:
    """A template by name (``print_templates/NAME.toml``) or from a TOML file path."""
    path, data = read_named_toml(name_or_path, TEMPLATE_DIR, "template")
    data.setdefault("name", path.stem)
    if tile_mm is not None:
        data["tile_mm"] = tile_mm
    known = set(Template.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown template key(s) {', '.join(unknown)}")
    if "page_mm" not in data:
        raise UserError(f"{path}: page_mm = [width, height] is required")
    try:
        data["page_mm"] = tuple(float(v) for v in data["page_mm"])
        return Template(**data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Slot:
    """Where one tile goes: page (1-based), tile box and the four marker boxes (TL, TR, BR, BL)."""

    page: int
    tile: tuple[float, float, float, float]  # x, y, w, h in mm
    markers: tuple[tuple[float, float], ...]  # marker centres (TL, TR, BR, BL) in mm


def grid(template: Template) -> tuple[int, int, float, float]:
    """Columns, rows and the top-left corner (mm) of the tile-block grid on one page."""
    w, h = template.page_mm
    avail_w = w - 2 * template.margin_mm
    avail_h = h - 2 * template.margin_mm - template.header_mm - template.footer_mm
    block, gap = template.block_mm, template.gap_mm
    cols = int((avail_w + gap) // (block + gap))
    rows = int((avail_h + gap) // (block + gap))
    if cols < 1 or rows < 1:
        raise UserError(
            f"a {template.tile_mm:g} mm tile with its markers needs {block:g} mm but template {template.name!r} "
            f"leaves {avail_w:g} x {avail_h:g} mm; use a smaller --tile-mm"
        )
    used_w = cols * block + (cols - 1) * gap
    x0 = template.margin_mm + (avail_w - used_w) / 2
    y0 = template.margin_mm + template.header_mm
    return cols, rows, x0, y0


def place(template: Template, count: int) -> list[Slot]:
    """Slots for ``count`` tiles, filling pages row by row."""
    cols, rows, x0, y0 = grid(template)
    per_page = cols * rows
    slots = []
    m, q, t = template.marker_mm, template.quiet_mm, template.tile_mm
    for i in range(count):
        page, k = divmod(i, per_page)
        r, c = divmod(k, cols)
        bx = x0 + c * (template.block_mm + template.gap_mm)
        by = y0 + r * (template.block_mm + template.gap_mm)
        tx, ty = bx + m + q, by + m + q
        near, far = m / 2, m + q + t + q + m / 2
        centres = ((bx + near, by + near), (bx + far, by + near), (bx + far, by + far), (bx + near, by + far))
        slots.append(Slot(page + 1, (round(tx, 4), round(ty, 4), t, t), tuple((round(x, 4), round(y, 4)) for x, y in centres)))
    return slots
