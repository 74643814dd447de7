"""Small models written the way real model code is written, including the habits that break
explainers today: in-place ReLU, ``out += identity``, one activation module reused, functional
activations, dead branches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one in-place ReLU module used twice, ``out += identity``.

    ``by_hand=True`` is the block as people fix it by hand for SHAP: a ReLU per call, no
    in-place operations (benchmarks compare against it).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, by_hand: bool = False) -> None:
        super().__init__()
        self.by_hand = by_hand
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=not by_hand)
        self.relu_out = nn.ReLU() if by_hand else self.relu
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.by_hand:
            return self.relu_out(out + identity)
        out += identity
        return self.relu(out)


class ResNetStyle(nn.Module):
    """A small ResNet: stem with non-overlapping max pooling, three basic blocks, head."""

    def __init__(self, num_classes: int = 5, width: int = 8, overlapping_pool: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        # torchvision's stem pools with overlapping windows, MaxPool2d(3, 2, 1).
        self.maxpool = nn.MaxPool2d(3, 2, 1) if overlapping_pool else nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FunctionalMLP(nn.Module):
    """Activations called as functions, which explainers cannot see."""

    def __init__(self, n_in: int = 10, hidden: int = 16, n_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = torch.sigmoid(self.fc2(x))
        return self.fc3(x)


class TwoInputNet(nn.Module):
    """An image branch and a tabular branch sharing one ReLU module, joined by concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.tab = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.head = nn.Linear(16 + 8, 2)

    def forward(self, image: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        a = torch.flatten(self.pool(self.act(self.conv(image))), 1)
        b = self.act(self.tab(table))
        return self.head(torch.cat([a, b], dim=1))


class DeadBranchNet(nn.Module):
    """Computes an auxiliary head it never returns; the dead branch reuses the live ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.relu = nn.ReLU()
        self.aux = nn.Linear(12, 12)
        self.fc2 = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc1(x))
        _unused = self.relu(self.aux(h) - 1.0)
        return self.fc2(h)


class PoolingNet(nn.Module):
    """Non-overlapping max pooling (kernel == stride) between functional ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


class MultiOutputNet(nn.Module):
    """Two heads on one trunk, returned as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 10), nn.Tanh())
        self.cls = nn.Linear(10, 3)
        self.reg = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls(h), torch.sigmoid(self.reg(h))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


class DenseNetStyle(nn.Module):
    """Dense connectivity: every layer's output concatenated onto its input; overlapping
    max pooling in the stem and average pooling in the transition."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + i * growth), nn.ReLU(inplace=True),
                          nn.Conv2d(8 + i * growth, growth, 3, padding=1, bias=False)) for i in range(3))
        self.transition = nn.Sequential(nn.BatchNorm2d(8 + 3 * growth), nn.ReLU(inplace=True),
                                        nn.Conv2d(8 + 3 * growth, 8, 1, bias=False), nn.AvgPool2d(2))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class VGGStyle(nn.Module):
    """Plain conv stacks, 2x2 max pooling, dropout in the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand, depthwise, project, with ReLU6 and a residual add."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.conv = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class MobileNetStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean([2, 3]))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.fc2(F.silu(self.fc1(scale))))
        return x * scale


class EfficientNetStyle(nn.Module):
    """MBConv with SiLU and a squeeze-excite gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                       nn.SiLU())
        self.se = SqueezeExcite(16, 4)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split channels, transform one half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((a, self.branch(b)), dim=1), 2)


class ShuffleNetStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.units = nn.Sequential(ShuffleUnit(8), ShuffleUnit(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean([2, 3]))


class TransformerEncoderStyle(nn.Module):
    """A two-layer transformer encoder over a sequence of feature vectors, mean-pooled."""

    def __init__(self, d_model: int = 16, heads: int = 2, seq: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d_model)
        self.pos = nn.Parameter(torch.randn(1, seq, d_model) * 0.1)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(1))


class ResNetStem(nn.Module):
    """conv, bn, relu, overlapping MaxPool2d(3, 2, 1): ResNet's stem, out-of-place."""

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)
        self.fc = nn.LazyLinear(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


class CeilPoolNet(nn.Module):
    """ceil_mode pooling whose last window hangs over the edge."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


class SqueezeExciteNet(nn.Module):
    """A conv stage gated by a squeeze-excite block with SiLU (EfficientNet's MBConv gate)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.SiLU()
        self.se = SqueezeExcite(8, 4)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for layer in (self.se.fc1, self.se.fc2):
                layer.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.se(self.act(self.conv(x))).mean((2, 3)))


class GatedMLP(nn.Module):
    """``a * sigmoid(b)``, as in GLU-style feed-forward blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Linear(6, 10)
        self.gate = nn.Linear(6, 10)
        self.out = nn.Linear(10, 2)
        with torch.no_grad():
            self.gate.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.value(x) * torch.sigmoid(self.gate(x)))


class LayerNormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.norm = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class GroupNormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


class MultiheadEncoder(nn.Module):
    """Two transformer encoder layers written with nn.MultiheadAttention (batch first)."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(2))
        self.norm1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.ff = nn.ModuleList(nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d)) for _ in range(2))
        self.norm2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for attn, norm1, ff, norm2 in zip(self.attn, self.norm1, self.ff, self.norm2):
            h = norm1(h + attn(h, h, h, need_weights=False)[0])
            h = norm2(h + ff(h))
        return self.head(h.mean(1))


class SDPAttention(nn.Module):
    """Attention written with F.scaled_dot_product_attention."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, length, d).mean(1))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, channels-last LayerNorm, MLP with GELU, layer scale, residual."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet-50 and deeper), with the same reused in-place ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, by_hand: bool = False) -> None:
        super().__init__()
        self.by_hand = by_hand
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=not by_hand)
        self.relu2, self.relu3 = (nn.ReLU(), nn.ReLU()) if by_hand else (self.relu, self.relu)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.by_hand:
            return self.relu3(out + identity)
        out += identity
        return self.relu(out)


RESNET_LAYERS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
                 101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}


class ResNet(nn.Module):
    """torchvision's ResNet layout at a configurable width: stem with MaxPool2d(3, 2, 1)."""

    def __init__(self, depth: int, width: int = 16, num_classes: int = 10, by_hand: bool = False) -> None:
        super().__init__()
        block, layers = RESNET_LAYERS[depth]
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=not by_hand)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, count in enumerate(layers):
            planes = width * 2 ** i
            blocks = []
            for j in range(count):
                blocks.append(block(cin, planes, stride=2 if (j == 0 and i > 0) else 1, by_hand=by_hand))
                cin = planes * getattr(block, "expansion", 1)
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MobileNetV2(nn.Module):
    """MobileNetV2's layout (inverted residuals, ReLU6) at a small width."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(inplace=True))
        blocks = []
        for stage in range(4):
            blocks.extend(InvertedResidual(width) for _ in range(2 + stage % 2))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width),
                                  nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class ViT(nn.Module):
    """A small vision transformer: patch embedding, class token, position embedding,
    pre-norm encoder layers (nn.TransformerEncoderLayer, GELU), classification head."""

    def __init__(self, image: int = 32, patch: int = 8, dim: int = 32, depth: int = 4, heads: int = 4,
                 num_classes: int = 10, mlp: int | None = None) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp or 2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class RMSNormBlock(nn.Module):
    """RMSNorm written out, as LLaMA-style code does, and as nn.RMSNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.weight = nn.Parameter(torch.rand(12) + 0.5)
        self.norm = nn.RMSNorm(12)
        self.fc2 = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return self.fc2(self.norm(torch.relu(h)))


class SequenceFirstEncoder(nn.Module):
    """A transformer run sequence-first inside (batch_first=False): its ReLU sees [L, N, E]."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x.transpose(0, 1)).mean(0))


class DilatedPoolNet(nn.Module):
    """Dilated, padded, overlapping max pooling, then an asymmetric-padding one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1, dilation=2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.tanh(self.conv(x)))
        return self.fc(F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=-1e9), 3, 2).flatten(1))


# -- Families from torchvision, timm and Hugging Face, written in the style of their code ------


def new_gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's "gelu_new", written out as Hugging Face writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Attention(nn.Module):
    """Causal self-attention with a fused c_attn projection and an explicit causal mask buffer."""

    def __init__(self, dim: int, heads: int, positions: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(positions, positions, dtype=torch.bool)).view(
            1, 1, positions, positions), persistent=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.size()[:-1], self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.c_attn(x).split(self.heads * self.head_dim, dim=2)
        query, key, value = self._split_heads(query), self._split_heads(key), self._split_heads(value)
        weights = torch.matmul(query, key.transpose(-1, -2)) / torch.full([], value.size(-1) ** 0.5)
        length = query.size(-2)
        causal = self.bias[:, :, :length, :length]
        weights = torch.where(causal, weights, torch.full([], torch.finfo(weights.dtype).min))
        out = torch.matmul(weights.softmax(-1), value).permute(0, 2, 1, 3).contiguous()
        return self.c_proj(out.view(*out.size()[:-2], -1))


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int, positions: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, heads, positions)
        self.ln_2 = nn.LayerNorm(dim)
        self.c_fc, self.c_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(new_gelu(self.c_fc(self.ln_2(x))))


class GPT2Classifier(nn.Module):
    """GPT2ForSequenceClassification on ``inputs_embeds``: position embeddings, pre-norm
    causal blocks, and the score of the last token picked with ``arange(batch)``."""

    def __init__(self, dim: int = 16, heads: int = 2, layers: int = 2, positions: int = 8, labels: int = 3) -> None:
        super().__init__()
        self.wpe = nn.Embedding(positions, dim)
        self.h = nn.ModuleList(GPT2Block(dim, heads, positions) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, labels, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(inputs_embeds.size(1), device=inputs_embeds.device).unsqueeze(0)
        hidden = inputs_embeds + self.wpe(positions)
        for block in self.h:
            hidden = block(hidden)
        logits = self.score(self.ln_f(hidden))
        batch_size = inputs_embeds.shape[0]
        return logits[torch.arange(batch_size, device=logits.device), -1]


class LayerNorm2d(nn.LayerNorm):
    """torchvision's channels-first LayerNorm: permute, normalise, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: depthwise 7x7, Permute, LayerNorm, MLP, layer scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
            nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class ConvNeXtStyle(nn.Module):
    """A ConvNeXt: patchify stem with LayerNorm2d, blocks, a downsampling layer, and a
    head behind adaptive average pooling to a grid that does not divide the map."""

    def __init__(self, dim: int = 8, labels: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, dim, 2, 2), LayerNorm2d(dim, eps=1e-6), CNBlock(dim),
            LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, 2 * dim, 2, 2), CNBlock(2 * dim))
        self.avgpool = nn.AdaptiveAvgPool2d(3)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Linear(2 * dim * 9, labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


class SwinWindowBlock(nn.Module):
    """Hugging Face's SwinLayer: pad to whole windows, (shifted) window attention with a
    relative position bias, and the branches on shapes its code takes (``width % window``,
    ``pad > 0``, ``min(resolution) <= window``)."""

    def __init__(self, dim: int = 8, heads: int = 2, window: int = 4, shift: int = 2) -> None:
        super().__init__()
        self.dim, self.heads, self.window, self.shift = dim, heads, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def maybe_pad(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, tuple]:
        pad_right = (self.window - width % self.window) % self.window
        pad_bottom = (self.window - height % self.window) % self.window
        pad_values = (0, 0, 0, pad_right, 0, pad_bottom)
        return F.pad(x, pad_values), pad_values

    def attention(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, tokens, dim = windows.shape
        qkv = self.qkv(windows).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dim // self.heads)
        bias = self.table[self.index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)
        scores = scores + bias.unsqueeze(0)
        if mask is not None:
            groups = mask.shape[0]
            scores = scores.view(n // groups, groups, self.heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.heads, tokens, tokens)
        out = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).reshape(n, tokens, dim)
        return self.proj(out)

    def shift_mask(self, height: int, width: int) -> torch.Tensor | None:
        if self.shift <= 0:
            return None
        image = torch.zeros((1, height, width, 1))
        spans = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        count = 0
        for h in spans:
            for w in spans:
                image[:, h, w, :] = count
                count += 1
        windows = partition(image, self.window).view(-1, self.window * self.window)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        if min(height, width) <= self.window:  # HF shrinks the window for small inputs
            self.shift, self.window = 0, min(height, width)
        shortcut = x
        x, pad_values = self.maybe_pad(self.norm1(x), height, width)
        _, padded_h, padded_w, _ = x.shape
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = partition(x, self.window).view(-1, self.window * self.window, channels)
        mask = self.shift_mask(padded_h, padded_w)
        x = reverse(self.attention(windows, mask).view(-1, self.window, self.window, channels), self.window,
                    padded_h, padded_w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        was_padded = pad_values[3] > 0 or pad_values[5] > 0
        if was_padded:
            x = x[:, :height, :width, :].contiguous()
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def partition(x: torch.Tensor, window: int) -> torch.Tensor:
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, channels)


def reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, height, width, channels)


class SwinStyle(nn.Module):
    """Patch embedding to a 6x6 grid (padded to 8x8 windows), two Swin layers (the second
    shifted), mean pooling and a head."""

    def __init__(self, dim: int = 8, labels: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, 2)
        self.layers = nn.ModuleList([SwinWindowBlock(dim, shift=0), SwinWindowBlock(dim, shift=2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean((1, 2)))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class GhostModule(nn.Module):
    """timm's GhostModule: a primary conv, a cheap depthwise conv of its output, both
    concatenated and sliced to the wanted channels."""

    def __init__(self, cin: int, cout: int, ratio: int = 2, relu: bool = True) -> None:
        super().__init__()
        self.out_chs = cout
        init = math.ceil(cout / ratio)
        new = init * (ratio - 1)
        act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), act)
        self.cheap_operation = nn.Sequential(nn.Conv2d(init, new, 3, 1, 1, groups=init, bias=False),
                                             nn.BatchNorm2d(new), nn.ReLU(inplace=True) if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.out_chs, :, :]


class GhostSqueezeExcite(nn.Module):
    """timm's SqueezeExcite with GhostNet's hard-sigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * hard_sigmoid(se)


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, relu=True)
        self.se = GhostSqueezeExcite(mid, max(mid // 4, 2))
        self.ghost2 = GhostModule(mid, cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.ghost1(x))) + x


class GhostNetStyle(nn.Module):
    def __init__(self, width: int = 8, labels: int = 4) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(GhostBottleneck(width, 13, width), GhostBottleneck(width, 11, width))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        return self.classifier(self.global_pool(x).flatten(1))


class AlbertLayer(nn.Module):
    """Hugging Face's AlbertLayer: post-norm attention and feed-forward with gelu_new."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.dense = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Linear(hidden, 2 * hidden)
        self.ffn_output = nn.Linear(2 * hidden, hidden)
        self.full_layer_layer_norm = nn.LayerNorm(hidden, eps=1e-12)

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        n, length, hidden = x.shape
        return x.view(n, length, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads_first(self.query(x)), self.heads_first(self.key(x)), self.heads_first(self.value(x))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=extended_mask)
        context = context.transpose(1, 2).flatten(2)
        x = self.attention_norm(x + self.dense(context))
        return self.full_layer_layer_norm(x + self.ffn_output(new_gelu(self.ffn(x))))


class AlbertStyle(nn.Module):
    """ALBERT: factorised embeddings projected to the hidden size, one layer whose weights
    are shared by every repetition, a boolean padding mask, and a tanh pooler."""

    def __init__(self, embedding: int = 6, hidden: int = 12, heads: int = 2, repeats: int = 3,
                 labels: int = 2) -> None:
        super().__init__()
        self.embedding_hidden_mapping_in = nn.Linear(embedding, hidden)
        self.shared = AlbertLayer(hidden, heads)
        self.repeats = repeats
        self.pooler = nn.Linear(hidden, hidden)
        self.pooler_activation = nn.Tanh()
        self.classifier = nn.Linear(hidden, labels)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        n, length, _ = embeddings.shape
        keep = torch.ones(n, length, dtype=torch.bool, device=embeddings.device)
        keep[:, length - 1:] = False  # the last position is padding
        extended_mask = keep[:, None, None, :]
        x = self.embedding_hidden_mapping_in(embeddings)
        for _ in range(self.repeats):
            x = self.shared(x, extended_mask)
        return self.classifier(self.pooler_activation(self.pooler(x[:, 0])))


class SequenceFirstAttention(nn.Module):
    """Self-attention written sequence-first, as pre-``batch_first`` code does: ``[T, N, E]``
    throughout, heads merged into the batch for ``bmm`` like nn.MultiheadAttention's own code."""

    def __init__(self, dim: int = 8, heads: int = 2, labels: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)  # [T, N, E]
        length, n, dim = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k, v = (t.contiguous().view(length, n * self.heads, dim // self.heads).transpose(0, 1) for t in (q, k, v))
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(dim // self.heads), dim=-1)
        context = torch.bmm(weights, v).transpose(0, 1).contiguous().view(length, n, dim)
        h = self.norm(x + self.out_proj(context))
        return self.head(torch.relu(h).mean(0))


class SequenceFirstGate(nn.Module):
    """A GLU feed-forward applied sequence-first (``[T, N, E]``): the product's operands have
    the batch on axis 1."""

    def __init__(self, dim: int = 8, labels: int = 2) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(dim, 2 * dim), nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)
        return self.out((self.value(x) * torch.sigmoid(self.gate(x))).mean(0))


class OutlookAttention(nn.Module):
    """VOLO's outlooker attention, as timm writes it: each position's k x k window of values
    (``unfold``) mixed by weights the centre position computes, summed back (``fold``, which
    exports to ONNX Col2Im)."""

    def __init__(self, dim: int = 8, heads: int = 2, kernel: int = 3) -> None:
        super().__init__()
        self.heads, self.kernel, self.scale = heads, kernel, (dim // heads) ** -0.5
        self.v = nn.Linear(dim, dim, bias=False)
        self.attn = nn.Linear(dim, kernel ** 4 * heads)
        self.proj = nn.Linear(dim, dim)
        self.unfold = nn.Unfold(kernel_size=kernel, padding=kernel // 2)
        self.head = nn.Linear(dim * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 4, 4, dim]
        b, h, w, c = x.shape
        k2, d = self.kernel ** 2, c // self.heads
        v = self.v(x).permute(0, 3, 1, 2)
        v = self.unfold(v).reshape(b, self.heads, d, k2, h * w).permute(0, 1, 4, 3, 2)
        a = self.attn(x).reshape(b, h * w, self.heads, k2, k2).permute(0, 2, 1, 3, 4)
        a = (a * self.scale).softmax(dim=-1)
        out = (a @ v).permute(0, 1, 4, 3, 2).reshape(b, c * k2, h * w)
        out = F.fold(out, output_size=(h, w), kernel_size=self.kernel, padding=self.kernel // 2)
        return self.head(self.proj(out.permute(0, 2, 3, 1)).flatten(1))
