"""The TensorFlow MNIST tutorial ConvNet and its training protocol, ported literally to torch.

Source: ``tutorials/image/mnist/convolutional.py`` of the tensorflow/models repository, the network
of Cohen's slides (seed 001).  Network: conv 5x5x32 (SAME) - ReLU - max-pool 2 - conv 5x5x64 -
ReLU - max-pool 2 - dense 3136x512 - ReLU - dropout 0.5 - dense 512x10.  Weights are drawn from a
truncated normal with std 0.1 (re-drawn beyond 2 std, ``tf.truncated_normal``), biases are 0 (conv1)
or 0.1.  Dense weights are stored as TF stores them, ``(in, out)``, and applied as ``h @ W``.

Overparameterized dense layers keep the original weight as the first factor and append one
``out x out`` matrix per extra layer: ``h @ W_1 @ W_2`` (the tutorial's contraction order, so the
end-to-end product ``W_1 W_2`` is never formed in the forward pass).

Objective (the tutorial's): ``mean cross-entropy + l2 * sum l2_loss(t)`` with
``l2_loss(t) = ||t||^2 / 2`` over the dense layers' variables: each factor and bias (``"factor"``,
the literal port) or the end-to-end products and biases (``"product"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STD = 0.1


def truncated_normal(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """``tf.truncated_normal(shape, stddev=0.1)``: N(0, 0.1^2) re-drawn outside +-2 std."""
    out = torch.empty(shape)
    return nn.init.trunc_normal_(out, 0.0, STD, -2 * STD, 2 * STD, generator=generator)


def added_matrix(size: int, init: str, generator: torch.Generator) -> Tensor:
    """An added ``size x size`` factor: the identity, or truncated N(0, 0.1^2) (``"normal"``)."""
    if init == "identity":
        return torch.eye(size)
    if init == "normal":
        return truncated_normal((size, size), generator)
    raise ValueError(f"`init` must be 'identity' or 'normal', got {init!r}")


class TutorialNet(nn.Module):
    """The tutorial ConvNet; ``fc1`` / ``fc2`` hold each dense layer's factors, ``(in, out)``."""

    def __init__(
        self, channels: list[int], hidden: int, dropout: float, generator: torch.Generator
    ):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.dropout = dropout
        draw = [truncated_normal(s, generator) for s in ((c1, 1, 5, 5), (c2, c1, 5, 5))]
        dense = [truncated_normal(s, generator) for s in ((49 * c2, hidden), (hidden, 10))]
        with torch.no_grad():
            self.conv1.weight.copy_(draw[0])
            self.conv2.weight.copy_(draw[1])
            conv1_bias: Any = self.conv1.bias
            conv2_bias: Any = self.conv2.bias
            nn.init.zeros_(conv1_bias)
            nn.init.constant_(conv2_bias, 0.1)
        self.fc1 = nn.ParameterList([nn.Parameter(dense[0])])
        self.fc2 = nn.ParameterList([nn.Parameter(dense[1])])
        self.b1 = nn.Parameter(torch.full((hidden,), 0.1))
        self.b2 = nn.Parameter(torch.full((10,), 0.1))

    def layers(self) -> list[nn.ParameterList]:
        return [self.fc1, self.fc2]

    def overparameterize(self, depth: int, init: str, generator: torch.Generator) -> TutorialNet:
        """Append ``depth - 1`` square factors to each dense layer (in place); returns ``self``."""
        for factors in self.layers():
            size = factors[-1].shape[1]
            for _ in range(depth - 1):
                factors.append(nn.Parameter(added_matrix(size, init, generator)))
        return self

    def product(self, index: int) -> Tensor:
        """The end-to-end weight ``W_1 W_2 ... W_N`` of dense layer ``index``."""
        out = self.layers()[index][0]
        for factor in self.layers()[index][1:]:
            out = out @ factor
        return out

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2).flatten(1)
        for factor in self.fc1:
            h = h @ factor
        h = F.dropout(F.relu(h + self.b1), self.dropout, self.training)
        for factor in self.fc2:
            h = h @ factor
        return h + self.b2


def l2_loss(tensors: Iterable[Tensor]) -> Tensor:
    """``sum ||t||^2 / 2`` (``tf.nn.l2_loss`` summed)."""
    return sum((t.square().sum() for t in tensors), torch.zeros(())) / 2


def regularizer(net: TutorialNet, on: str) -> Tensor:
    """The tutorial's L2 term on each dense factor (``"factor"``) or on each product."""
    if on == "factor":
        weights: list[Tensor] = [w for factors in net.layers() for w in factors]
    elif on == "product":
        weights = [net.product(i) for i in range(len(net.layers()))]
    else:
        raise ValueError(f"`l2_on` must be 'factor' or 'product', got {on!r}")
    return l2_loss([*weights, net.b1, net.b2])


def collapsed(net: TutorialNet) -> TutorialNet:
    """A copy with each dense layer replaced by its end-to-end product (the original shape)."""
    channels = [net.conv1.out_channels, net.conv2.out_channels]
    out = TutorialNet(channels, net.b1.numel(), net.dropout, torch.Generator())
    out.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc")},
                        strict=False)  # fmt: skip
    with torch.no_grad():
        out.fc1[0].copy_(net.product(0))
        out.fc2[0].copy_(net.product(1))
    return out.to(net.b1.device)


def schedule(step: int, batch: int, train_size: int) -> tuple[int, int]:
    """The tutorial's data offset and decay exponent at ``step``.

    ``offset = (step * batch) mod (train_size - batch)`` (in order, no shuffling) and the
    staircase exponent ``floor(step * batch / train_size)`` of ``lr * decay ** exponent``.
    """
    return (step * batch) % (train_size - batch), (step * batch) // train_size


def train(
    net: TutorialNet,
    opt: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor],
    config: dict[str, Any],
    objective: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    progress: Callable[[range], Iterable[int]],
) -> tuple[Tensor, Tensor]:
    """The tutorial's loop: ``int(epochs * n) // batch`` momentum steps; per-step (loss, CE)."""
    x, y = data
    batch, n = config["batch_size"], x.shape[0]
    total = int(config["epochs"] * n) // batch
    losses = torch.empty(total, 2, dtype=torch.float64)
    net.train()
    for step in progress(range(total)):
        offset, exponent = schedule(step, batch, n)
        for group in opt.param_groups:
            group["lr"] = config["lr"] * config["decay"] ** exponent
        opt.zero_grad(set_to_none=True)
        loss, fit = objective(x[offset : offset + batch], y[offset : offset + batch])
        loss.backward()
        opt.step()
        losses[step, 0], losses[step, 1] = loss.detach(), fit
    return losses[:, 0], losses[:, 1]


@torch.no_grad()
def evaluate(net: TutorialNet, x: Tensor, y: Tensor, chunk: int = 2000) -> dict[str, Any]:
    """Eval-mode cross-entropy, error rate and logits over ``(x, y)`` in chunks."""
    net.eval()
    logits = torch.cat([net(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
    fit = F.cross_entropy(logits, y)
    error = (logits.argmax(dim=1) != y).double().mean()
    return {"cross_entropy": float(fit), "error": float(error), "logits": logits}


def every(values: Tensor, stride: int) -> tuple[list[int], list[float]]:
    """``values`` at steps ``0, stride, 2 stride, ...`` (what the tutorial prints)."""
    steps = list(range(0, values.numel(), stride))
    return steps, [float(values[s]) for s in steps]


def window_means(values: Tensor, width: int) -> tuple[list[int], list[float]]:
    """Means over consecutive windows of ``width`` steps, keyed by each window's last step."""
    chunks = values.double().split(width)
    ends = [min((k + 1) * width, values.numel()) for k in range(len(chunks))]
    return ends, [float(c.mean()) for c in chunks]


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
