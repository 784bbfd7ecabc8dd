"""Forward+backward time of the embedded ``signs`` model on a batch (the cost of one attack step).

Usage: python benchmarks/signs_model_speed.py [--batch 32] [--repeats 30] [--device cpu] [--json]
Prints the median over repeats, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from physical_adv import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = load_model("signs", args.device)
    x = torch.rand(args.batch, 3, model.input_size, model.input_size, device=model.device)
    times = []
    for i in range(args.repeats + 5):
        xi = x.clone().requires_grad_(True)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(xi).logsumexp(1).sum().backward()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 5:
            times.append(time.perf_counter() - t)
    result = {
        "batch": args.batch,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "median_ms": round(1000 * statistics.median(times), 2),
        "min_ms": round(1000 * min(times), 2),
    }
    print(json.dumps(result) if args.json else
          f"signs forward+backward, batch {args.batch} on {result['device']} ({result['threads']} threads): "
          f"median {result['median_ms']} ms, min {result['min_ms']} ms")


if __name__ == "__main__":
    main()
