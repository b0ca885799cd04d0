"""The paper's three models (the paper's setup).

* :class:`MnistCNN` - the small CNN of the authors' MNIST experiments, exactly 21,840 parameters.
* :func:`cifar_resnet18` - torchvision's ``resnet18(num_classes=10)``, ImageNet stem included,
  no pretraining, as the authors used it (about 11.2M parameters).
* :class:`BiLSTMClassifier` - embedding(vocab, 100) -> one bidirectional LSTM layer of 128 units
  each way -> concat(mean-pool, max-pool) over time (512) -> linear(512 -> 1) logit.

Every model ends in an ``nn.Linear`` output layer: :func:`flhelpers.params.layout_of` finds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flhelpers.registry import MODELS, register_model


class MnistCNN(nn.Module):
    """conv(1->10,5) -> maxpool2 -> relu -> conv(10->20,5) -> dropout -> maxpool2 -> relu
    -> linear(320->50) -> relu -> dropout -> linear(50->num_outputs)."""

    def __init__(self, num_outputs: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return self.fc2(x)


def cifar_resnet18(num_outputs: int = 10) -> nn.Module:
    """torchvision's ResNet18 with a ``num_outputs``-way head, random init (as the paper)."""
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_outputs)


class BiLSTMClassifier(nn.Module):
    """The IMDB sentiment model: embedding -> BiLSTM -> [mean-pool; max-pool] -> one logit.

    Padding tokens (id 0) are included in the pooling, as in the authors' Keras-style model.
    """

    def __init__(
        self,
        vocab_size: int,
        num_outputs: int = 1,
        embedding_dim: int = 100,
        hidden_size: int = 128,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(4 * hidden_size, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embedding(x))
        pooled = torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)
        return self.fc(pooled)


def build_model(name: str, num_outputs: int, **meta) -> nn.Module:
    """Instantiate the registered model ``name``; ``meta`` carries dataset facts (``vocab_size``)."""
    factory = MODELS.get(name)
    return factory(num_outputs=num_outputs, **meta)


def _mnist_cnn(num_outputs: int = 10, **_: object) -> nn.Module:
    return MnistCNN(num_outputs)


def _resnet18(num_outputs: int = 10, **_: object) -> nn.Module:
    return cifar_resnet18(num_outputs)


def _bilstm(num_outputs: int = 1, vocab_size: int | None = None, **_: object) -> nn.Module:
    if vocab_size is None:
        raise ValueError("The BiLSTM needs the dataset's vocab_size (meta['vocab_size']).")
    return BiLSTMClassifier(vocab_size=int(vocab_size), num_outputs=num_outputs)


register_model("mnist-cnn", _mnist_cnn)
register_model("resnet18", _resnet18)
register_model("bilstm", _bilstm)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def loss_fn(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, or BCE-with-logits on a single logit (IMDB)."""
    if name == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def predict(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes: argmax, or ``logit > 0`` for one logit (the authors used > 0.5: wrong)."""
    if name == "bce_with_logits":
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=1)
