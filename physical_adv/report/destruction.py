"""Kurakin et al.'s destruction rate (2016, "Adversarial examples in the physical world", Eq. 1).

Among *eligible* images — the clean version classified correctly and the adversarial version
fooling the model, both digitally (the sheet records each tile's digital top-5) — the fraction
of photographed adversarial versions classified correctly again: the share of the attack that
printing and photographing destroyed. Computed per photo, pooled over the eligible runs' photos
(as in the paper, where each image is one photo), and per run (each eligible run's own rate and
their mean); top-1 and top-5; and *paired*, over only the frames in which the run's clean
control was found and classified correctly, which separates "the attack died in print" from
"the photo was just bad".
"""

from __future__ import annotations

from physical_adv.outcome import in_top, is_fooled
from physical_adv.stats import clustered_rate

TOP_K = ((1, "top1"), (5, "top5"))


def correct_at(top: list[str], true_class: str, k: int) -> bool:
    """Whether a classification counts as correct at top-``k``: the top-1 prediction is not
    fooled (``k == 1``), or the true class is among the first ``k`` names."""
    if k == 1:
        return bool(top) and not is_fooled(top[0], true_class)
    return in_top(top, true_class, k)


def _photo_top(line: dict) -> list[str]:
    return [t["class"] for t in line.get("top5") or []] or [line["pred"]]


def ineligibility(adv: dict, clean: dict | None, k: int) -> str | None:
    """Why a run does not enter the destruction rate at top-``k``; ``None`` when it does."""
    if clean is None:
        return "no clean control of this run on the sheet"
    photo_model = adv.get("photo_model")
    if photo_model is not None and photo_model != adv.get("model"):
        return (f"the photos were classified by {photo_model} (capture --model), not by {adv.get('model')}, "
                "whose digital classification decides eligibility")
    if not adv.get("digital") or not clean.get("digital"):
        return "the sheet recorded no digital classification (its model was unavailable)"
    if not correct_at(clean["digital"]["top5"], adv["true_class"], k):
        return f"the clean image is misclassified digitally (top-{k})"
    if correct_at(adv["digital"]["top5"], adv["true_class"], k):
        return f"the adversarial image does not fool the model digitally (top-{k})"
    return None


def _photos(adv: dict, clean: dict, lines_by_tile: dict[str, list[dict]], k: int):
    """``(restored?, cluster)`` of each found photo of the adversarial tile, and of those whose
    frame also holds the clean control found and correct."""
    found = [l for l in lines_by_tile[adv["tile_id"]] if l["found"]]
    photos = [(correct_at(_photo_top(l), adv["true_class"], k), l["_cluster"]) for l in found]
    clean_ok = {(l["_session"], l["frame"]) for l in lines_by_tile[clean["tile_id"]]
                if l["found"] and correct_at(_photo_top(l), adv["true_class"], k)}
    paired = [p for p, l in zip(photos, found) if (l["_session"], l["frame"]) in clean_ok]
    return photos, paired


def _rate(photos: list[tuple[bool, tuple]]) -> dict:
    return clustered_rate([p[0] for p in photos], [p[1] for p in photos]).to_json()


def _mean(values: list[float | None]) -> dict:
    defined = [v for v in values if v is not None]
    return {"mean": sum(defined) / len(defined) if defined else None, "runs": len(defined)}


def destruction_rates(runs: list[tuple[dict, dict | None]], lines_by_tile: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    """Destruction rates per run and pooled.

    Args:
        runs: ``(adversarial tile, its run's clean tile or None)`` from the manifest.
        lines_by_tile: found and not-found log lines of each tile id, each tagged with
            ``_session`` and ``_cluster``.

    Returns:
        ``(per_run, summary)``: one dict per run with ``destruction_top1``/``destruction_top5``
        entries (``eligible``, ``reason`` when there is no rate, the rate fields, ``paired``), and
        a summary keyed ``destruction_top1``/``destruction_top5`` holding the per-photo rate pooled
        over eligible runs, ``per_run`` (the mean of the eligible runs' own rates) and ``paired``
        likewise. A rate is ``None`` (undefined) where it has no observation.
    """
    per_run = [{"run": adv["run"], "adversarial_tile": adv["tile_id"], "clean_tile": clean["tile_id"] if clean else None,
                "true_class": adv["true_class"], "target_class": adv.get("target_class")} for adv, clean in runs]
    summary = {}
    for k, key in TOP_K:
        pooled, pooled_paired, run_rates, run_paired = [], [], [], []
        for (adv, clean), result in zip(runs, per_run):
            reason = ineligibility(adv, clean, k)
            if reason:
                result[f"destruction_{key}"] = {"eligible": False, "reason": reason, "rate": None, "paired": None}
                continue
            photos, paired = _photos(adv, clean, lines_by_tile, k)
            entry = {"eligible": True, "reason": None if photos else "the adversarial tile was never found",
                     **_rate(photos), "paired": _rate(paired)}
            result[f"destruction_{key}"] = entry
            pooled += photos
            pooled_paired += paired
            run_rates.append(entry["rate"])
            run_paired.append(entry["paired"]["rate"])
        summary[f"destruction_{key}"] = {
            "runs": len(run_rates), **_rate(pooled), "per_run": _mean(run_rates),
            "paired": {**_rate(pooled_paired), "per_run": _mean(run_paired)}}
    return per_run, summary
