#!/usr/bin/env python3
"""Export a PyTorch CNN as a dyno model package: a folder with manifest.toml and one
TorchScript module per block (see models/README.md for the format).

A block takes one tensor and returns one tensor; the blocks run in order, and dyno may
cut the model between any two of them. Needs PyTorch (and torchvision for --torchvision).

Library use:
    import torch
    from export_torchscript import export
    blocks = [("stem", model.stem), ("body", model.body), ("head", MyHead(model))]
    export(blocks, torch.randn(1, 3, 224, 224), "my_pkg", name="my_model",
           resize=256, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

Command line, for torchvision's MobileNetV2 or ResNet-50 with their ImageNet weights:
    python export_torchscript.py --torchvision mobilenet_v2 --out mobilenet_v2_pkg
"""
import argparse
import json
import os

import torch


class _Classifier(torch.nn.Module):
    """Global average pooling, flatten, then the given classifier."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def torchvision_blocks(name):
    """The blocks of a torchvision model, cut where exactly one tensor crosses."""
    import torchvision

    if name == "mobilenet_v2":
        m = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
        blocks = [(f"features.{i}", f) for i, f in enumerate(m.features)]
        return blocks + [("classifier", _Classifier(m.classifier))]
    if name == "resnet50":
        m = torchvision.models.resnet50(weights="IMAGENET1K_V1").eval()
        blocks = [("stem", torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool))]
        for li in range(1, 5):
            layer = getattr(m, f"layer{li}")
            blocks += [(f"layer{li}.{i}", b) for i, b in enumerate(layer)]
        return blocks + [("fc", _Classifier(m.fc))]
    raise SystemExit(f"--torchvision knows mobilenet_v2 and resnet50, not {name}")


def _toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def export(blocks, example, out, name, resize=None, mean=(), std=(), labels=None):
    """Traces each block on the activation that reaches it and writes the package."""
    os.makedirs(out, exist_ok=True)
    lines = [f"name = {json.dumps(name)}"]
    if labels is not None:
        with open(os.path.join(out, "labels.txt"), "w") as f:
            f.write("\n".join(labels))
        lines.append('labels = "labels.txt"')
    lines += ["", "[input]", f"shape = {_toml_list(list(example.shape[1:]))}"]
    if resize is not None:
        lines.append(f"resize = {int(resize)}")
    lines += [f"mean = {_toml_list(list(mean))}", f"std = {_toml_list(list(std))}"]
    x = example
    with torch.no_grad():
        for i, (block_name, block) in enumerate(blocks):
            block.eval()
            file = f"{i:03d}_{block_name.replace('/', '_')}.pt"
            torch.jit.save(torch.jit.trace(block, x), os.path.join(out, file))
            x = block(x)
            lines += ["", "[[blocks]]", f"name = {json.dumps(block_name)}", f"file = {json.dumps(file)}"]
    with open(os.path.join(out, "manifest.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(out, "manifest.toml")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torchvision", required=True, help="mobilenet_v2 or resnet50")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    blocks = torchvision_blocks(a.torchvision)
    path = export(blocks, torch.randn(1, 3, 224, 224), a.out, a.torchvision, resize=256,
                  mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    print(f"wrote {path}; check it with `dyno models check {a.out}`")


if __name__ == "__main__":
    main()
