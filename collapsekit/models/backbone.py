"""2D MONAI ResNet backbones for single-channel CT slices.

MONAI's ResNet with ``spatial_dims=2``, ``n_input_channels=1``, a stride-2 7x7 stem (MONAI defaults
to stride 1, which costs 4x the compute of the usual ResNet) and bias-free downsample convolutions,
so state-dict keys and shapes match torchvision-style ResNets (``conv1``, ``bn1``, ``layer1..4``,
``downsample.0/1``). The classification ``fc`` is dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import resnet as monai_resnet
from torch import nn
from torch.optim.swa_utils import update_bn

from collapsekit.options import look_up_option

__all__ = ["BACKBONES", "Backbone", "build_backbone", "recalibrate_batch_norm"]

#: name -> (block, layers, final width)
BACKBONES: dict[str, tuple[str, list[int], int]] = {
    "resnet18": ("basic", [2, 2, 2, 2], 512),
    "resnet34": ("basic", [3, 4, 6, 3], 512),
    "resnet50": ("bottleneck", [3, 4, 6, 3], 2048),
}


class Backbone(nn.Module):
    """A ResNet trunk returning the final feature map or its global average.

    Args:
        arch: one of ``resnet18``, ``resnet34``, ``resnet50``.
        in_channels: input channels (1 for CT; 3 for ImageNet-style foreign weights).
        conv1_t_size, conv1_t_stride, no_max_pool, bias_downsample: MONAI ``ResNet``'s stem and
            shortcut settings. collapsekit trains with the defaults here (7×7 stride-2 stem,
            max-pool, bias-free downsample, the torchvision layout); MONAI's own defaults are
            stride 1 and downsample convolutions with bias, which foreign weights may carry.

    Attributes:
        arch: the architecture name.
        out_channels: width ``C`` of the final feature map (512 or 2048).
        undilated_stride: output stride of the final feature map as built: 32 with collapsekit's
            stem (stride-2 conv, max-pool), 16 with MONAI's default stride-1 stem.
        stride: output stride of the final feature map (``undilated_stride`` unless dilated).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 1,
        *,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 2,
        no_max_pool: bool = False,
        bias_downsample: bool = False,
    ) -> None:
        super().__init__()
        arch = look_up_option(arch, BACKBONES, "backbone")
        block, layers, width = BACKBONES[arch]
        net = monai_resnet.ResNet(
            block=block,
            layers=layers,
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            shortcut_type="B",
            bias_downsample=bias_downsample,
            feed_forward=False,
        )
        self.arch = arch
        self.in_channels = in_channels
        self.out_channels = width
        self.undilated_stride = conv1_t_stride * (1 if no_max_pool else 2) * 8
        self.stride = self.undilated_stride
        # Same attribute names as torchvision so state dicts load key for key.
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.act = net.act
        self.maxpool = nn.Identity() if no_max_pool else net.maxpool  # MONAI skips it in forward
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map. ``x``: ``(B, in_channels, H, W)`` -> ``(B, C, H/stride, W/stride)``."""
        return self.forward_stages(x)[1]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer3`` and ``layer4`` outputs: ``(B, C/2, H/16, W/16)`` and ``(B, C, H/32, W/32)``
        (strides as undilated)."""
        if x.shape[1] != self.in_channels and self.in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale slice fed to an RGB-pretrained model
        # a 1-channel input gives the stem a contiguous output even with channels_last weights
        x = self.conv1(x).contiguous(memory_format=self.memory_format)
        x = self.maxpool(self.act(self.bn1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x3 = self.layer3(x)
        return x3, self.layer4(x3)

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` once the module was moved there
        (``backbone.to(memory_format=torch.channels_last)``), else ``torch.contiguous_format``.

        Read from a 3×3 weight (a 1×1 or 1-channel weight is both formats at once). The stem's
        output is put in this format, so every later layer runs in it: on CPU, max-pooling and
        BatchNorm are several times faster in channels_last (see ``benchmarks/step_vs_reference.py``).
        """
        conv = self.layer1[0].conv2
        assert isinstance(conv, nn.Conv2d)
        w = conv.weight
        cl = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        return torch.channels_last if cl else torch.contiguous_format

    @property
    def layer3_channels(self) -> int:
        """Width of the ``layer3`` output (half the final width in every ResNet)."""
        return self.out_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled embedding: ``(B, in_channels, H, W)`` -> ``(B, C)``."""
        return self.forward_features(x).mean(dim=(2, 3))

    def last_norm(self) -> nn.Module:
        """The final normalisation of the last residual block of the last stage (ZCA placement)."""
        block = self.layer4[-1]
        norm = block.bn3 if hasattr(block, "bn3") else block.bn2
        assert isinstance(norm, nn.Module)
        return norm

    def set_last_norm(self, module: nn.Module) -> None:
        """Replace the module returned by :meth:`last_norm` (used to insert ZCA whitening)."""
        block = self.layer4[-1]
        if hasattr(block, "bn3"):
            block.bn3 = module
        else:
            block.bn2 = module

    def dilate(self, output_stride: int) -> Backbone:
        """Turn the last stages' strides into dilations (DeepLab-style), in place.

        ``output_stride`` 16 dilates ``layer4`` (dilation 2); 8 dilates ``layer3`` (2) and
        ``layer4`` (4), like the r50-d8 of mmsegmentation. Weights are unchanged. The values name
        the usual stride-2 stem's output strides; with another stem the map is 2× (16) or 4× (8)
        finer than undilated, and :attr:`stride` says the true value.
        """
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        plan = {32: [], 16: [(self.layer4, 2)], 8: [(self.layer3, 2), (self.layer4, 4)]}[
            output_stride
        ]
        for layer, dilation in plan:
            for m in layer.modules():
                if isinstance(m, nn.Conv2d):
                    if m.stride == (2, 2):
                        m.stride = (1, 1)
                    if m.kernel_size == (3, 3):
                        m.dilation = (dilation, dilation)
                        m.padding = (dilation, dilation)
        self.stride = self.undilated_stride * output_stride // 32
        return self


def build_backbone(arch: str = "resnet18", in_channels: int = 1, **stem: Any) -> Backbone:
    """Build a randomly initialised :class:`Backbone` (see its docstring for ``stem``)."""
    return Backbone(arch, in_channels, **stem)


@torch.no_grad()
def recalibrate_batch_norm(module: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running statistics on ``images``; no weight changes.

    A randomly initialised ResNet in eval mode normalises with running statistics (0, 1), i.e.
    not at all, so its embeddings say more about BatchNorm than about the weights. Recalibrating
    the statistics on the data (PyTorch's ``swa_utils.update_bn``: ``momentum=None``, the
    cumulative average of the per-chunk statistics) gives the honest random baseline. The module
    is left in eval mode.

    Args:
        module: the network; ``module(x)`` runs it on a batch.
        images: ``(N, C, H, W)`` inputs on the module's device (or movable to it).
        batch_size: chunk size of the forward passes (every chunk weighs the same in the average).
    """
    device = next(module.parameters()).device
    update_bn(
        [images[i : i + batch_size].to(device) for i in range(0, len(images), batch_size)], module
    )
    module.eval()
