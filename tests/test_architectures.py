"""The architectures the import must cover, through both exporters and opsets 17 to 20.

``rewrite`` verifies against the torch model at two batch sizes, so a pass here means the
exporter's whole output for that architecture imports faithfully.
"""

from __future__ import annotations

import pytest
import torch
from architectures import (
    DenseNetStyle,
    EfficientNetStyle,
    MobileNetStyle,
    ResNetStyle,
    ShuffleNetStyle,
    TransformerEncoderStyle,
    VGGStyle,
    randomize_batchnorm,
)
from explain import assert_round_trips
from torch import nn

from rewriter import rewrite

IMAGE = (3, 16, 16)
ARCHITECTURES = {
    "resnet": (ResNetStyle, IMAGE),
    "densenet": (DenseNetStyle, IMAGE),
    "vgg": (VGGStyle, IMAGE),
    "mobilenet": (MobileNetStyle, IMAGE),
    "efficientnet": (EfficientNetStyle, IMAGE),
    "shufflenet": (ShuffleNetStyle, IMAGE),
    "transformer": (TransformerEncoderStyle, (6, 4)),
}
EXPORTS = [("dynamo", 18), ("dynamo", 20), ("torchscript", 17), ("torchscript", 20)]


@pytest.mark.parametrize("exporter,opset", EXPORTS, ids=[f"{e}{o}" for e, o in EXPORTS])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_imports_faithfully(arch, exporter, opset):
    make, shape = ARCHITECTURES[arch]
    model = randomize_batchnorm(make())
    x = torch.randn(3, *shape)
    rewritten, report = rewrite(model, x, exporter=exporter, opset=opset, report=True)
    assert report.exporter == exporter
    y = torch.randn(7, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(y), model(y), atol=1e-5, rtol=1e-4)
    assert_round_trips(rewritten, y)
    leaves = [m for m in rewritten.modules() if not list(m.children())]
    assert not any(getattr(m, "inplace", False) for m in leaves)
    assert not any(isinstance(m, nn.Dropout) for m in leaves)
