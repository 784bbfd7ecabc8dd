"""Why a 25 % sticker can survive hardening: paste the centre 25 % of a real speed-limit-80 sign (no
optimisation) onto the stop sign and count how often each model reads 80 over 1,000 held-out print-camera
draws; a grey square of the same size for contrast.

Usage: python benchmarks/sticker_paste_probe.py signs signs-hardened
"""
import json, sys
import numpy as np, torch
from physical_adv.attack import eot
from physical_adv.attack.runner import evaluate_texture
from physical_adv.models import load_model
from physical_adv.signs.designs import render_clean
S = 512
stop, s80 = render_clean("stop", S).astype(np.float32) / 255, render_clean("speed limit 80", S).astype(np.float32) / 255
side = int(round(S * 0.5)); o = (S - side) // 2  # 25 % of the tile's area, centred (as --patch square --patch-area 0.25)
pasted = stop.copy(); pasted[o:o + side, o:o + side] = s80[o:o + side, o:o + side]
grey = stop.copy(); grey[o:o + side, o:o + side] = 0.5
dist = eot.load_distribution("print-camera")
out = {}
for spec in sys.argv[1:]:
    m = load_model(spec, "cpu"); names = m.class_names
    for name, img in (("pasted 80 centre", pasted), ("grey square", grey), ("clean", stop)):
        t = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
        p, _, _ = evaluate_texture(m, t, dist, 1000, torch.Generator().manual_seed(7))
        pred = p.argmax(1)
        out[f"{spec}: {name}"] = {"speed limit 80": float((pred == names.index("speed limit 80")).float().mean()),
                                  "stop": float((pred == names.index("stop")).float().mean())}
print(json.dumps(out, indent=1))
