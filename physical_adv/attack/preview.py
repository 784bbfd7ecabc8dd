"""The picture a user wants after an attack: transformed samples with the model's verdict."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from physical_adv.artifacts import atomic_write_bytes
from physical_adv.outcome import attack_succeeded


def success_text(metrics: dict, distribution: str) -> str:
    """The held-out success rate as a person reads it: with its number of draws of
    ``distribution`` and 95 % interval, or "on its one draw" when the distribution is
    deterministic (no interval)."""
    rate, n, ci = metrics["eot_success"], metrics["eot_samples"], metrics["eot_success_ci95"]
    if ci is None:
        return f"{rate:.0%} on the one draw of {distribution} (deterministic: no interval)"
    return f"{rate:.1%} of {n} held-out {distribution} draws (95% CI {ci[0]:.1%}–{ci[1]:.1%})"


def eot_preview(path: Path, images: torch.Tensor, probs: torch.Tensor, class_names: list[str], true_idx: int,
                target_idx: int | None, record: dict, count: int = 16) -> None:
    """Write a 4×4 grid of held-out EOT samples, each titled with the prediction and its
    probability, green where the attack succeeds and red where it fails.

    Args:
        images: ``(N, 3, h, w)`` rendered samples in [0, 1]; probs: ``(N, C)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(images))
    cols = 4
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.25 + 0.6), dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(count):
        p = probs[i]
        k = int(p.argmax())
        success = attack_succeeded(class_names[k], class_names[true_idx], None if target_idx is None else class_names[target_idx])
        ax = axes.flat[i]
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"{class_names[k]}\n{float(p[k]):.2f}", fontsize=8, color="#1a7f37" if success else "#cf222e")
    m = record["metrics"]
    goal = f"→ {record['target_class']}" if target_idx is not None else f"not {record['true_class']}"
    fig.suptitle(f"{goal}: success {success_text(m, record['eval_distribution']['name'])}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
