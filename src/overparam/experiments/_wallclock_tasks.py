"""The three training tasks of the wall-clock experiment: model, data, loss and evaluation.

* ``convnet``: the source's MNIST ConvNet protocol (Arora, Cohen & Hazan 2018, Sec. 8; the
  network, initialization, dropout and L2 objective of :mod:`overparam.experiments.mnist_convnet`).
* ``mlp``: a ReLU MLP on flattened MNIST, plain cross-entropy.
* ``charlm``: a small pre-norm causal transformer predicting the next byte of the Python standard
  library's sources (:func:`overparam.datasets.text.stdlib_corpus`), cross-entropy.

A task gives fresh seeded models, a seeded batch stream, the training loss, the loss on a fixed
probe subset of the training data (the training-loss curve) and held-out metrics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from overparam.datasets.text import stdlib_corpus, windows
from overparam.engine import Config
from overparam.experiments import _mnist_tutorial as tutorial
from overparam.experiments import mnist_convnet as source

Batch = tuple[Tensor, Tensor]
TASKS = ("convnet", "mlp", "charlm")
VALIDATION = 5000  # the tutorial holds out the first 5000 training images


@dataclass(frozen=True)
class Task:
    """One task; every callable is pure given its arguments (seeds are explicit)."""

    name: str
    build: Callable[[int], nn.Module]
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    batches: Callable[[int], Callable[[], Batch]]
    probe: Callable[[nn.Module], float]
    evaluate: Callable[[nn.Module], dict[str, float]]
    init: str
    info: dict[str, Any]


@torch.no_grad()
def cross_entropy_metrics(
    model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000
) -> dict[str, float]:
    """Eval-mode mean cross-entropy and accuracy of ``model`` on ``(x, y)`` (last dim = classes)."""
    model.eval()
    logits = torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
    flat, target = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    loss = F.cross_entropy(flat, target)
    return {"loss": float(loss), "accuracy": float((flat.argmax(1) == target).double().mean())}


class _IndexStream:
    """Successive minibatch indices: a seeded permutation of ``range(count)`` per epoch."""

    def __init__(self, count: int, batch: int, seed: int) -> None:
        self.count, self.batch, self.per_epoch = count, batch, count // batch
        self.order = torch.Generator().manual_seed(seed)
        self.perm, self.position = torch.empty(0, dtype=torch.long), 0

    def __call__(self) -> Tensor:
        i = self.position % self.per_epoch
        if i == 0:
            self.perm = torch.randperm(self.count, generator=self.order)
        self.position += 1
        return self.perm[i * self.batch : (i + 1) * self.batch]


def _mnist_batches(x: Tensor, y: Tensor, batch: int, seed: int) -> Callable[[], Batch]:
    draw = _IndexStream(x.shape[0], batch, seed)

    def next_batch() -> Batch:
        idx = draw()
        return x[idx], y[idx]

    return next_batch


def _check_sizes(config: Config, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{key}` must be an integer >= 1, got {value!r}")


def _mnist(config: Config, flatten: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The source experiment's MNIST split: training images after its held-out validation set."""
    prefix = "convnet" if not flatten else "mlp"
    batch, size = config[f"{prefix}_batch"], config[f"{prefix}_train_size"]
    if size <= batch:
        raise ValueError(f"`{prefix}_train_size` must be > {prefix}_batch {batch}, got {size}")
    sizes = {"validation_size": VALIDATION, "train_size": size, "test_size": config["test_size"]}
    data = source.load(sizes, torch.device("cpu"))
    (x, y), (xt, yt) = data["train"], data["test"]
    if flatten:
        x, xt = x.flatten(1), xt.flatten(1)
    return x, y, xt, yt


class SourceConvNet(nn.Module):
    """The tutorial ConvNet of :mod:`overparam.experiments._mnist_tutorial` with ``nn.Linear``
    dense layers (``weight`` = the tutorial's ``(in, out)`` matrix transposed): the same function
    and initialization, in the form :func:`overparam.nn.overparameterize` and Muon act on."""

    def __init__(self, net: tutorial.TutorialNet) -> None:
        super().__init__()
        self.conv1, self.conv2, self.dropout = net.conv1, net.conv2, net.dropout
        w1, w2 = net.fc1[0], net.fc2[0]
        self.fc1, self.fc2 = nn.Linear(*w1.shape), nn.Linear(*w2.shape)
        with torch.no_grad():
            for layer, weight, bias in ((self.fc1, w1, net.b1), (self.fc2, w2, net.b2)):
                layer.weight.copy_(weight.T)
                layer.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2).flatten(1)
        h = F.dropout(F.relu(self.fc1(h)), self.dropout, self.training)
        return self.fc2(h)


def convnet_objective(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The tutorial's objective: cross-entropy + ``5e-4 * sum ||t||^2 / 2`` over the dense
    (end-to-end) weights and biases, the same for every optimizer."""
    with parametrize.cached():  # one end-to-end product per step when overparameterized
        fit = F.cross_entropy(model(x), y)
        layers: list[Any] = [model.fc1, model.fc2]
        dense: list[Tensor] = [t for m in layers for t in (m.weight, m.bias)]
        return fit + source.COMMON["l2"] * tutorial.l2_loss(dense)


def _convnet_build(config: Config, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    channels, hidden = list(config["convnet_channels"]), config["convnet_hidden"]
    return SourceConvNet(
        tutorial.TutorialNet(channels, hidden, source.COMMON["dropout"], generator)
    )


def _in_order(x: Tensor, y: Tensor, batch: int, seed: int) -> Callable[[], Batch]:
    """The tutorial's data order: offset ``step * batch mod (n - batch)``, no shuffling."""
    state = {"step": 0}

    def next_batch() -> Batch:
        offset, _ = tutorial.schedule(state["step"], batch, x.shape[0])
        state["step"] += 1
        return x[offset : offset + batch], y[offset : offset + batch]

    return next_batch


@torch.no_grad()
def _objective_at(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000) -> float:
    model.eval()
    with parametrize.cached():
        parts = [
            convnet_objective(model, x[i : i + chunk], y[i : i + chunk])
            for i in range(0, x.shape[0], chunk)
        ]
    weights = [min(chunk, x.shape[0] - i) / x.shape[0] for i in range(0, x.shape[0], chunk)]
    return float(sum(w * p for w, p in zip(weights, parts, strict=True)))


def convnet_task(config: Config) -> Task:
    """The source's ConvNet protocol (network, init, dropout, objective, data order, batch)."""
    _check_sizes(config, ("convnet_train_size", "convnet_batch", "convnet_hidden", "probe_size"))
    if len(config["convnet_channels"]) != 2:
        raise ValueError(
            f"`convnet_channels` must list 2 widths, got {config['convnet_channels']!r}"
        )
    x, y, xt, yt = _mnist(config, flatten=False)
    probe = config["probe_size"]

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = cross_entropy_metrics(model, xt, yt)
        fit = cross_entropy_metrics(model, x[:probe], y[:probe])["loss"]  # the objective less L2
        return {
            "test_cross_entropy": out["loss"],
            "test_accuracy": out["accuracy"],
            "train_cross_entropy": fit,
        }

    return Task(
        name="convnet",
        build=functools.partial(_convnet_build, config),
        loss=convnet_objective,
        batches=functools.partial(_in_order, x, y, config["convnet_batch"]),
        probe=lambda model: _objective_at(model, x[:probe], y[:probe]),
        evaluate=evaluate,
        init="identity",
        info={"train_size": x.shape[0], "test_size": xt.shape[0], "batch": config["convnet_batch"]},
    )


def _mlp_build(config: Config, seed: int) -> nn.Module:
    widths = [784, *config["mlp_hidden"], 10]
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _cross_entropy(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    logits = model(xb)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))


def mlp_task(config: Config) -> Task:
    """A ReLU MLP ``784 -> hidden... -> 10`` (PyTorch's default init), cross-entropy."""
    _check_sizes(config, ("mlp_train_size", "mlp_batch", "probe_size"))
    x, y, xt, yt = _mnist(config, flatten=True)
    probe = config["probe_size"]

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = cross_entropy_metrics(model, xt, yt)
        return {"test_loss": out["loss"], "test_accuracy": out["accuracy"]}

    return Task(
        name="mlp",
        build=functools.partial(_mlp_build, config),
        loss=_cross_entropy,
        batches=functools.partial(_mnist_batches, x, y, config["mlp_batch"]),
        probe=lambda model: cross_entropy_metrics(model, x[:probe], y[:probe])["loss"],
        evaluate=evaluate,
        init="preserve",
        info={"train_size": x.shape[0], "test_size": xt.shape[0], "batch": config["mlp_batch"]},
    )


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x GELU MLP, residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, w))
        return x + self.out(F.gelu(self.fc(self.norm2(x))))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, ``layers`` blocks, final norm, linear head."""

    def __init__(self, vocab: int, context: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(
                f"`charlm_width` must be divisible by charlm_heads {heads}, got {width}"
            )
        self.token, self.position = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.token(tokens) + self.position(positions)
        return self.head(self.norm(self.blocks(h)))


def _charlm_build(config: Config, vocab: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CharTransformer(
            vocab,
            config["charlm_context"],
            config["charlm_width"],
            config["charlm_heads"],
            config["charlm_layers"],
        )


def _text_batches(tokens: Tensor, context: int, batch: int, seed: int) -> Callable[[], Batch]:
    generator = torch.Generator().manual_seed(seed)
    return lambda: windows(tokens, context, batch, generator)


def charlm_task(config: Config) -> Task:
    """Next-byte prediction on the stdlib sources; probe and validation sets are fixed windows."""
    keys = ("charlm_bytes", "charlm_context", "charlm_width", "charlm_heads", "charlm_layers")
    _check_sizes(config, (*keys, "charlm_batch", "charlm_probe"))
    corpus = stdlib_corpus(config["charlm_bytes"], valid_fraction=0.1)
    context = config["charlm_context"]
    count = config["charlm_probe"]  # windows of `context` tokens each
    probe_x, probe_y = windows(corpus.train, context, count, torch.Generator().manual_seed(10**6))
    valid_x, valid_y = windows(corpus.valid, context, count, torch.Generator().manual_seed(10**6))

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = cross_entropy_metrics(model, valid_x, valid_y)
        return {"valid_loss": out["loss"], "valid_accuracy": out["accuracy"]}

    return Task(
        name="charlm",
        build=functools.partial(_charlm_build, config, corpus.vocab_size),
        loss=_cross_entropy,
        batches=functools.partial(_text_batches, corpus.train, context, config["charlm_batch"]),
        probe=lambda model: cross_entropy_metrics(model, probe_x, probe_y)["loss"],
        evaluate=evaluate,
        init="preserve",
        info={
            "train_tokens": corpus.train.numel(),
            "valid_tokens": corpus.valid.numel(),
            "vocab": corpus.vocab_size,
            "files": len(corpus.files),
            "last_file": corpus.files[-1],
            "python": corpus.python,
            "batch": config["charlm_batch"],
            "probe_windows": count,
        },
    )


BUILDERS: dict[str, Callable[[Config], Task]] = {
    "convnet": convnet_task,
    "mlp": mlp_task,
    "charlm": charlm_task,
}


def make_task(name: str, config: Config) -> Task:
    """The task called ``name`` built from ``config``."""
    if name not in BUILDERS:
        raise ValueError(f"`tasks` entries must be among {TASKS}, got {name!r}")
    return BUILDERS[name](config)
