"""Small models for the demo and the training benchmark.

- :class:`MLP` for scikit-learn's 8x8 digits (64 features).
- :class:`MNIST1DCNN`, the 1D CNN of the MNIST-1D paper (Greydanus, 2020,
  ``mnist1d`` repository, ``ConvBase``): three stride-2 convolutions of 25 channels and
  one linear layer; 5,210 parameters, about 94% test accuracy on the default
  4,000-sample training split.

:func:`make_model` picks the model a built-in dataset is trained with.
"""

from __future__ import annotations

import torch
from torch import nn

from shardprune.errors import ConfigError

MODEL_FOR_DATASET = {"digits": "mlp", "mnist1d": "cnn1d"}
#: scikit-learn digits' pixels are integers 0..16.
DIGITS_SCALE = 1.0 / 16.0


class MLP(nn.Module):
    """Two hidden ReLU layers.

    Args:
        in_features: Input size after flattening (64 for 8x8 digits).
        num_classes: Number of outputs.
        hidden: Width of both hidden layers (default 128).
        input_scale: Inputs are multiplied by this first (1/16 maps digits' 0..16 to 0..1).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, input_scale: float = 1.0) -> None:
        super().__init__()
        self.input_scale = float(input_scale)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() * self.input_scale)


class MNIST1DCNN(nn.Module):
    """The MNIST-1D paper's CNN (``ConvBase`` in github.com/greydanus/mnist1d).

    Args:
        length: Input sequence length (40 for MNIST-1D).
        num_classes: Number of outputs (default 10).
        channels: Channels of each convolution (default 25, as in the paper).
    """

    def __init__(self, length: int = 40, num_classes: int = 10, channels: int = 25) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        out_len = length
        for kernel in (5, 3, 3):
            out_len = (out_len + 2 - kernel) // 2 + 1
        self.linear = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float().reshape(x.shape[0], 1, -1)
        h = self.conv1(h).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()
        return self.linear(h.flatten(1))


def make_model(dataset: str, in_features: int, num_classes: int) -> nn.Module:
    """The model the demo trains on a built-in dataset.

    Args:
        dataset: ``"digits"`` (MLP) or ``"mnist1d"`` (the paper's 1D CNN).
        in_features: Number of input values per sample (64 for digits, 40 for MNIST-1D).
        num_classes: Number of label classes.

    Raises:
        ConfigError: ``dataset`` is not one of the built-in datasets.
    """
    kind = MODEL_FOR_DATASET.get(dataset)
    if kind == "mlp":
        return MLP(in_features, num_classes, input_scale=DIGITS_SCALE)
    if kind == "cnn1d":
        return MNIST1DCNN(in_features, num_classes)
    raise ConfigError(f"dataset={dataset!r} has no demo model; expected one of {sorted(MODEL_FOR_DATASET)}")
