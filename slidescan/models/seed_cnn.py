"""``seed-cnn``: the tutorial baseline slidescan started from, kept by name for comparison.

Keras-style stacked 3×3 convolutions ('same' padding, ReLU), one 3×3 max pooling, dropout, and a
large dense head that holds almost all of its ~51M parameters; single sigmoid output (here a logit:
the sigmoid lives in the loss and in inference, as everywhere in slidescan).
"""

from __future__ import annotations

from torch import Tensor, nn

from slidescan.models.registry import register_model


class SeedCNN(nn.Module):
    """The tutorial's CNN: conv32×2 → maxpool3 → dropout → conv64×2 → dropout → dense → logit."""

    def __init__(self, input_size: int = 96, hidden: int = 776, dropout: float = 0.3) -> None:
        super().__init__()
        side = input_size // 3
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3),
            nn.Dropout(dropout),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N,) for a normalised batch."""
        return self.classifier(self.features(x)).squeeze(1)


@register_model(
    "seed-cnn", input_size=96, description="tutorial baseline: Keras-style CNN, 3×3 max pool, ~51M"
)
def seed_cnn(**config: object) -> nn.Module:
    """The tutorial baseline."""
    return SeedCNN(**config)  # type: ignore[arg-type]
