"""``pcamnet-v2``: slidescan's default patch classifier, built to generalise to unseen slides.

Why it looks like this (measured in ``benchmarks/RESULTS.md`` §model ablation):

- **Padding and global average pooling.** Every 3×3 convolution is padded, so border pixels are
  seen as often as centre ones, and a global average pool ends the feature extractor. Padding-free
  ``pcamnet-s`` was exactly dense-capable but lost ~0.05 AUC on patches from unseen slides.
- **Downsample early.** A stride-2 stem and a stride-2 convolution opening each stage: no
  convolution runs at the full 96×96 (the cost that dominates CPU inference), and every stage costs
  about the same number of multiply-adds (~75 M per patch in all, ~2.4 M parameters).
- **BatchNorm + ReLU, dropout before the linear head.** Trained with strong colour augmentation
  (``slidescan.engine.augment``), AdamW and a cosine schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slidescan.models.registry import register_model

_STATISTICS_AFTER = (0, 2, 4, 6)  # the last layer at 48², 24², 12² and 6²


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PCamNetV2(nn.Module):
    """Padded VGG-style CNN with global average pooling: 96×96 RGB → one tumour logit."""

    def __init__(self, width: int = 24, dropout: float = 0.3) -> None:
        super().__init__()
        w = [width * 2**i for i in range(5)]  # 24, 48, 96, 192, 384
        layers: list[nn.Module] = [_conv(3, w[0], stride=2)]  # 48×48
        for cin, cout in zip(w[:-1], w[1:], strict=True):  # 24, 12, 6, 3
            layers += [_conv(cin, cout, stride=2), _conv(cout, cout)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(w[-1], 1)

    def feature_statistics(self, x: Tensor) -> Tensor:
        """Per-channel mean and standard deviation of the activations at 48², 24², 12² and 6²
        (N, 720): how the tissue looks at several scales, for the out-of-distribution check.

        The pooled features the head sees are trained to ignore what does not change the
        label (stain, tissue type); these earlier statistics keep it (other organs, other
        preparations) while strong colour augmentation keeps them calm under stain shifts.
        """
        stats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _STATISTICS_AFTER:
                stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(stats, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N,) for normalised 96×96 patches."""
        if tuple(x.shape[-2:]) != (96, 96):
            raise ValueError(f"expected 96×96 patches, got {tuple(x.shape[-2:])}")
        return self.head(self.dropout(self.pool(self.features(x)).flatten(1))).squeeze(1)


@register_model(
    "pcamnet-v2",
    input_size=96,
    description="padded VGG-style CNN with global pooling, trained for unseen slides",
)
def pcamnet_v2(**config: object) -> nn.Module:
    """slidescan's default model."""
    return PCamNetV2(**config)  # type: ignore[arg-type]
