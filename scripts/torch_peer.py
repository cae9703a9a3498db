"""PyTorch eager peer for src/benchmark.py (run with an interpreter that has torch and torchvision).

Measures the same architecture (torchvision's MobileNetV3; MobileNetV1 from the paper's table, which torchvision
lacks) with the same threads, batch and resolution as the MindSpore run: training img/s (forward + backward +
SGD momentum step) and inference img/s, each the median of `--repeats` timings; with --channels_last the model and
the input in channels-last memory format (much faster in PyTorch on CPU). Prints one JSON line.
"""
import argparse
import json
import os
import sys

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.benchmark import median_rate  # noqa: E402  (no MindSpore import: runs beside torch)

V1_STEM = 32
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
             (512, 1), (1024, 2), (1024, 1))


def conv_bn_relu6(cin, cout, kernel, stride, groups=1):
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True)]


def mobilenet_v1(width_mult, num_classes):
    channels = max(int(V1_STEM * width_mult), 8)
    layers = conv_bn_relu6(3, channels, 3, 2)
    for out, stride in V1_BLOCKS:
        out = max(int(out * width_mult), 8)
        layers += conv_bn_relu6(channels, channels, 3, stride, groups=channels) + conv_bn_relu6(channels, out, 1, 1)
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def build(name, width_mult, num_classes):
    if name == "mobilenet_v1":
        return mobilenet_v1(width_mult, num_classes)
    return getattr(torchvision.models, name)(num_classes=num_classes, width_mult=width_mult)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--width_mult", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--channels_last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(0)
    net = build(args.model, args.width_mult, 10)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def train_steps(steps):
        net.train()
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(net(images), labels).backward()
            optimizer.step()

    def infer_steps(steps):
        net.eval()
        with torch.no_grad():
            for _ in range(steps):
                net(images)

    train_steps(1 + args.warmup)
    train = median_rate(train_steps, args.steps, args.repeats, args.batch_size)
    infer_steps(1 + args.warmup)
    infer = median_rate(infer_steps, args.steps, args.repeats, args.batch_size)
    print(json.dumps({"model": args.model, "train_img_s": round(train, 2), "infer_img_s": round(infer, 2),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
