"""Train the ViT of ``studies/vit_fashion.toml`` on Fashion-MNIST, here, from random weights (not pretrained).

    python studies/train_vit_fashion.py            # ≈ 30-40 min on 2 busy cores; writes weights/vit_fashion.safetensors

The architecture and the weights path come from the study config itself (its ``[model]`` section, built by rba's
timm adapter with the same preprocessing ``rba`` applies), so the file always fits ``rba run vit_fashion``. Run it
from the folder you run the study in: like ``rba data``, the weights path starts at the working directory.

Training: the 60,000 training images (seeded shuffle, horizontal flips), AdamW with a one-epoch linear warm-up
and a cosine decay; the test accuracy on the 10,000 test images is printed after every epoch and written with
the settings, the wall time and the load average to ``<weights>.json`` next to the weights. The study draws its
calibration, probe and eval splits from those test images only (``rba data fashion-mnist-test``). An existing
weights file is kept (``--force`` retrains); the file is written atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

STUDY = Path(__file__).resolve().with_name("vit_fashion.toml")
_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "rba" / "__init__.py").is_file():  # run from a source checkout: use its rba
    sys.path.insert(0, str(_CHECKOUT))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(STUDY), help="study config whose [model] to train (default: %(default)s)")
    parser.add_argument("--out", help="weights file to write (default: the config's model.weights, from the working directory)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s: on a busy shared machine a second thread mostly waits for its partner, measured 0.8 against 0.1 CPU-s a step)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (a smoke test)")
    parser.add_argument("--force", action="store_true", help="retrain even when the weights file exists")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F

    from rba._io import atomic_path
    from rba.adapters._timm import ImagePreprocess, create_timm_model
    from rba.config import load_config
    from rba.datasets import fashion_mnist_arrays
    from rba.errors import RBAError

    try:
        cfg = load_config(args.config, base_dir=Path.cwd())
        out = Path(args.out) if args.out else cfg.resolve_path(cfg.model.weights)
        if out is None:
            raise SystemExit(f"train: error: {args.config} sets no model.weights; give --out")
        if out.exists() and not args.force:
            print(f"train: {out} exists (--force retrains)", file=sys.stderr)
            return 0
        x_train, y_train = fashion_mnist_arrays("train")
        x_test, y_test = fashion_mnist_arrays("test")
    except RBAError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg.model.pretrained = False
    model, _ = create_timm_model(cfg, img_size=cfg.data.image_size)
    preprocess = ImagePreprocess.for_timm(model, cfg.data.image_size)
    rng = np.random.default_rng(args.seed)

    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=steps_per_epoch)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - steps_per_epoch))
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[steps_per_epoch])

    @torch.no_grad()
    def test_accuracy() -> float:
        model.eval()
        hits = 0
        for k in range(0, len(x_test), 500):
            hits += int((model(preprocess(x_test[k: k + 500])).argmax(1) == torch.from_numpy(y_test[k: k + 500])).sum())
        return hits / len(x_test)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"train: {cfg.model.name} {cfg.model.options}, {n_params:,} parameters; {len(x_train)} images, "
          f"{args.epochs} epochs of {steps_per_epoch} steps; load {_load()}", file=sys.stderr)
    start = time.perf_counter()
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(len(x_train))
        running = 0.0
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * args.batch_size: (step + 1) * args.batch_size])
            x = preprocess(x_train[idx])
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.cross_entropy(model(x), torch.from_numpy(y_train[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            running += float(loss.detach())
        acc = test_accuracy()
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch, "train_loss": running / steps_per_epoch, "test_accuracy": acc,
                        "elapsed_s": round(elapsed, 1), "load": _load()})
        print(f"train: epoch {epoch}/{args.epochs}: loss {running / steps_per_epoch:.4f}, test accuracy {acc:.4f}, "
              f"{elapsed / 60:.1f} min, load {_load()}", file=sys.stderr)

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp))
    record = {"config": str(Path(args.config).resolve()), "model": cfg.model.name, "options": cfg.model.options,
              "image_size": cfg.data.image_size, "parameters": n_params, "train_images": len(x_train),
              "test_images": len(x_test), "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
              "test_accuracy": history[-1]["test_accuracy"] if history else None,
              "wall_s": round(time.perf_counter() - start, 1), "history": history, "trained": "here, from random weights"}
    with atomic_path(out.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    print(f"train: wrote {out} (test accuracy {record['test_accuracy']:.4f}, {record['wall_s'] / 60:.1f} min)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
