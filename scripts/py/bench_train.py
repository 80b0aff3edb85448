"""PyTorch side of `trainer bench train`: the same embedding network, loss and optimiser
as the Rust measurement, timed the same way. Prints one JSON object.

Network (see trainer/src/training/model.rs): conv5x5(3->32, same) [BN] ReLU,
conv3x3(32->64, same) [BN] ReLU maxpool2 dropout, conv3x3(64->64, same) [BN] ReLU maxpool2
dropout, flatten (C, H, W), dense(64*(S/4)^2 -> E) [L2 normalisation]. Training step:
forward in training mode, loss mean(e^2), backward, AdamW step.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, side, dim, batch_norm, dropout, l2):
        super().__init__()
        bn = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), bn(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), bn(64), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(64, 64, 3, padding=1), bn(64), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Flatten(),
        )
        self.dense = nn.Linear(64 * (side // 4) ** 2, dim)
        self.l2 = l2

    def forward(self, x):
        y = self.dense(self.features(x))
        if self.l2:
            y = y / torch.sqrt((y * y).sum(1, keepdim=True) + 1e-12)
        return y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-norm", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.25)
    ap.add_argument("--l2", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = Net(a.side, a.dim, a.batch_norm, a.dropout, a.l2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(a.batch, 3, a.side, a.side) - 0.5
    x1 = x[:1].clone()

    net.train()
    train_s = 0.0
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        if i > 0:
            train_s += time.perf_counter() - t0

    net.eval()
    fwd_s = 0.0
    lat = []
    with torch.inference_mode():
        for i in range(a.steps + 1):
            t0 = time.perf_counter()
            net(x).numpy()
            if i > 0:
                fwd_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            net(x1).numpy()
            if i > 0:
                lat.append((time.perf_counter() - t0) * 1e3)

    print(json.dumps({
        "kernel": f"pytorch {torch.__version__}",
        "side": a.side,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "train_images_per_sec": a.steps * a.batch / train_s,
        "forward_images_per_sec": a.steps * a.batch / fwd_s,
        "latency_b1_ms": statistics.median(lat),
    }))


if __name__ == "__main__":
    main()
