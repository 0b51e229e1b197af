"""ResNet-18/34/50/101/152 without importing torchvision (its import pulls in torch._dynamo: seconds of every start-up).

The networks are torchvision's architectures, with its parameter names (so its ImageNet files and this project's
checkpoints load as they are) and its initialization in the same order of random draws: with the same seed,
`resnet("resnet18")` holds exactly the weights of `torchvision.models.resnet18(weights=None)` and computes the same
outputs (tests/test_backbones.py compares both).
"""
from __future__ import annotations

import torch
from torch import nn

DEPTHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
          "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
          "resnet152": ("bottleneck", (3, 8, 36, 3))}
EXPANSION = {"basic": 1, "bottleneck": 4}  # output channels of a block = planes × expansion
STAGE_PLANES = (64, 128, 256, 512)  # layer1 ... layer4


def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    """k×k convolution without bias, padded to keep the size at stride 1."""
    return nn.Conv2d(c_in, c_out, kernel_size=k, stride=stride, padding=k // 2, bias=False)


class Block(nn.Module):
    """A residual block, B×C_in×H×W → B×(planes·expansion)×H/s×W/s: basic (two 3×3 convolutions) or bottleneck
    (1×1 → 3×3 with the stride → 1×1), plus the shortcut (`downsample`: a strided 1×1 convolution and BN where the
    shape changes). Modules are registered in torchvision's order (the initialization draws follow it)."""

    def __init__(self, kind: str, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.kind = kind
        if kind == "basic":
            self.conv1, self.bn1 = conv(c_in, planes, 3, stride), nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
        else:
            self.conv1, self.bn1 = conv(c_in, planes, 1), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
            c_out = planes * EXPANSION[kind]
            self.conv3, self.bn3 = conv(planes, c_out, 1), nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.kind == "bottleneck":
            out = self.bn3(self.conv3(self.relu(out)))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """conv1 (7×7, stride 2) → bn1 → relu → maxpool (stride 2) → layer1 ... layer4 (strides 1, 2, 2, 2) → avgpool
    → fc: B×3×H×W → B×num_classes. The backbones use the children up to a layer (model/backbones.py)."""

    def __init__(self, kind: str, depths: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = 64
        for i, (planes, n) in enumerate(zip(STAGE_PLANES, depths)):
            stride, c_out = (1 if i == 0 else 2), planes * EXPANSION[kind]
            # the shortcut is built before the blocks, as in torchvision (order of the default-init draws)
            down = nn.Sequential(conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out)) \
                if stride != 1 or c_in != c_out else None
            blocks = [Block(kind, c_in, planes, stride, down)]
            blocks += [Block(kind, c_out, planes) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(arch: str, num_classes: int = 1000) -> ResNet:
    """A randomly initialized ResNet of DEPTHS ("resnet18", ...), as torchvision.models.<arch>(weights=None)."""
    kind, depths = DEPTHS[arch]
    return ResNet(kind, depths, num_classes)
