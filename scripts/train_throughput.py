"""Training throughput (images/s) of models on Fashion-MNIST batches, measured in alternation in one process.

Each round times ``--steps`` optimizer steps (forward, backward, AdamW) of every model in turn on the same
pre-loaded batches, so the machine's load drifts affect all models alike; the median over rounds is reported,
with the median of per-round ratios to the first model. Data loading is excluded (see `patnet train` for
end-to-end figures). ``--precision bf16`` runs forward and loss under autocast on the chosen device;
``--compile`` times ``torch.compile``d models (compiled during the warm-up round). ``--device cuda`` trains
on the GPU (batches moved there beforehand, each round's steps timed between synchronisations).

    .venv/bin/python scripts/train_throughput.py --models patnet_t0 fasternet_t0 --img-size 64
    .venv/bin/python scripts/train_throughput.py --precision bf16 --compile
    python scripts/train_throughput.py --device cuda --img-size 224 -b 256 --precision bf16
"""
from __future__ import annotations

import argparse
import statistics
import time
from itertools import islice

import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from patnet.data import build_dataset, dataset_info
from patnet.device import resolve_device
from patnet.models import create_model


def device_label(device: torch.device, threads: int) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} thread(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["patnet_t0", "fasternet_t0"])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", help="Fashion-MNIST's folder (default: Debian's)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    train_set = build_dataset(args.dataset, "train", args.data_dir, args.img_size, no_aug=True)
    loader = iter(DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True))
    batches = [(images.to(device), targets.to(device)) for images, targets in islice(loader, args.steps)]
    info = dataset_info(args.dataset)
    runs = {}
    for name in args.models:
        model = create_model(name, num_classes=len(train_set.classes), in_chans=info.in_chans).to(device).train()
        optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
        runs[name] = (torch.compile(model) if args.compile else model, optimizer)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16")

    def step_all(name: str) -> float:
        model, optimizer = runs[name]
        sync()
        start = time.perf_counter()
        for images, targets in batches:
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    for name in args.models:  # warm-up
        step_all(name)
    rates = {name: [] for name in args.models}
    for _ in range(args.rounds):
        for name in args.models:
            rates[name].append(step_all(name))
    first = args.models[0]
    print(f"training throughput, {args.dataset} at {args.img_size} px, batch {args.batch_size}, "
          f"{device_label(device, args.threads)}, {args.precision}{', compiled' if args.compile else ', eager'}, "
          f"{args.rounds} rounds x {args.steps} steps")
    for name in args.models:
        ratios = [a / b for a, b in zip(rates[name], rates[first])]
        print(f"  {name:<16} {statistics.median(rates[name]):7.0f} img/s (min {min(rates[name]):.0f}, "
              f"max {max(rates[name]):.0f})  ratio to {first}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
