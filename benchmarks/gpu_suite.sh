#!/usr/bin/env bash
# The GPU figures of the README in one go, on any machine with a CUDA device.
#
# Usage: benchmarks/gpu_suite.sh [OUT]          (OUT defaults to gpu-figures/)
#        GPU_SUITE_DRY=1 benchmarks/gpu_suite.sh [OUT]   every piece on the CPU with tiny repeats (a dry check)
#
# Writes into OUT, one JSON file per piece, then prints a summary (also kept as OUT/summary.txt):
#   env.json                    torch, CUDA and device
#   eot_signs.json              EOT step ÷ bare forward+backward, signs at 64 px: one texture, and batched K = 1, 8, 64
#   eot_resnet.json             the same for the ResNet-18 and ResNet-50 architectures at 224 px (K = 1, 8)
#   sweep_eager.json            attacks per minute of signs jobs at K = 1, 8, 64 against the bare model's ceiling
#   sweep_compile.json          the same with torch.compile
#   sweep_amp.json              the same with autocast (bfloat16, or float16 without it)
#   sweep_compile_amp.json      both
# A piece that fails is reported and the others still run; the exit status is then 1.
# PYTHON picks the interpreter (default: .venv/bin/python when there is one, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-figures}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [ "${GPU_SUITE_DRY:-0}" = 1 ]; then
    DEVICE=cpu
    EOT_ARGS=(--repeats 1 --samples 2)
    SWEEP_ARGS=(--steps 2 --samples 2 --repeats 1)
    SIGNS_K=1,2 RESNET_K=1,2 SWEEP_K=1,2
    echo "gpu_suite.sh: dry run on the CPU with tiny repeats (GPU_SUITE_DRY=1): the figures mean nothing"
else
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_suite.sh: no CUDA device here (torch.cuda.is_available() is False), nothing measured;" \
             "GPU_SUITE_DRY=1 $0 runs every piece on the CPU as a dry check" >&2
        exit 1
    fi
    DEVICE=cuda
    EOT_ARGS=()
    SWEEP_ARGS=()
    SIGNS_K=1,8,64 RESNET_K=1,8 SWEEP_K=1,8,64
fi
mkdir -p "$OUT"
failed=()

# piece NAME COMMAND…: run COMMAND, its stdout into OUT/NAME.json (only when it succeeds)
piece() {
    local name=$1
    shift
    local start=$SECONDS
    printf '== %s: %.200s\n' "$name" "$*"
    if "$@" > "$OUT/$name.json.part"; then
        mv "$OUT/$name.json.part" "$OUT/$name.json"
        echo "   done in $((SECONDS - start)) s"
    else
        rm -f "$OUT/$name.json.part"
        failed+=("$name")
        echo "   FAILED after $((SECONDS - start)) s" >&2
    fi
}

piece env "$PYTHON" -c '
import json, platform, sys, torch
cuda = torch.cuda.is_available()
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
                  "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
                  "cpu_threads": torch.get_num_threads()}, indent=2))'
piece eot_signs "$PYTHON" benchmarks/eot_overhead.py --models signs --device "$DEVICE" --no-peers --json \
    --textures "$SIGNS_K" "${EOT_ARGS[@]}"
piece eot_resnet "$PYTHON" benchmarks/eot_overhead.py --models resnet18,resnet50 --device "$DEVICE" --no-peers --json \
    --textures "$RESNET_K" "${EOT_ARGS[@]}"
piece sweep_eager "$PYTHON" benchmarks/sweep_throughput.py --device "$DEVICE" --textures "$SWEEP_K" --json "${SWEEP_ARGS[@]}"
piece sweep_compile "$PYTHON" benchmarks/sweep_throughput.py --device "$DEVICE" --textures "$SWEEP_K" --json --compile \
    "${SWEEP_ARGS[@]}"
piece sweep_amp "$PYTHON" benchmarks/sweep_throughput.py --device "$DEVICE" --textures "$SWEEP_K" --json --amp "${SWEEP_ARGS[@]}"
piece sweep_compile_amp "$PYTHON" benchmarks/sweep_throughput.py --device "$DEVICE" --textures "$SWEEP_K" --json --compile \
    --amp "${SWEEP_ARGS[@]}"

"$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


env = load("env") or {}
print(f"GPU suite in {out}: {env.get('device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}")
for name in ("eot_signs", "eot_resnet"):
    data = load(name)
    if data is None:
        print(f"{name}: missing (the piece failed)")
        continue
    for model, r in data["models"].items():
        batched = ", ".join(f"K={k} {b['ratio']}" for k, b in r.get("batched", {}).items())
        print(f"EOT step ÷ bare forward+backward, {model}: one texture {r['ratio']} "
              f"({r['eot_step_ms']} vs {r['bare_ms']} ms); batched {batched}")
        if "breakdown" in r:
            parts = ", ".join(f"{part} {ms}" for part, ms in r["breakdown"]["ms"].items())
            print(f"  {model}, K={r['breakdown']['textures']} step, ms (timers on): {parts}")
for name in ("sweep_eager", "sweep_compile", "sweep_amp", "sweep_compile_amp"):
    data = load(name)
    if data is None:
        print(f"{name}: missing (the piece failed)")
        continue
    rows = "; ".join(f"K={k} {row['attacks_per_min']}/min ({100 * row['ceiling_fraction']:.0f} % of ceiling"
                     + (f", {row['speedup_over_one_at_a_time']}× K=1" if k != "1" else "") + ")"
                     for k, row in data["rows"].items())
    print(f"attacks per minute, {name[6:]} ({data['steps']} steps × {data['samples']} samples): {rows}")
EOF

if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_suite.sh: failed pieces: ${failed[*]} (figures of the others are in $OUT)" >&2
    exit 1
fi
echo "gpu_suite.sh: all figures in $OUT"
