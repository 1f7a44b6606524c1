"""A character-level text corpus available offline: the Python standard library's own sources.

The corpus is the bytes of the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (or an
explicit ``root``), read in sorted order of their relative POSIX paths, skipping anything under
``site-packages`` or ``dist-packages`` (installed packages differ between machines).  Whole files
are taken in that order until ``max_bytes`` is reached (the last file is cut), so the subset is a
deterministic function of the interpreter's stdlib and ``max_bytes``; no checksum is kept, but the
returned :class:`TextCorpus` names the files, the root and the Python version so a run can say
which corpus it used.

Tokens are bytes mapped to a compact vocabulary (the sorted distinct byte values of the subset),
so ``vocab[t]`` is the byte of token ``t``.  The split is contiguous: the first
``1 - valid_fraction`` of the token stream is the training text, the rest the validation text.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

EXCLUDED = ("site-packages", "dist-packages")


@dataclass(frozen=True)
class TextCorpus:
    """Token ids of a byte-level corpus and where they came from.

    Attributes:
        train: int64 token ids of the training text.
        valid: int64 token ids of the validation text.
        vocab: the byte value of each token id (sorted, distinct).
        files: relative paths of the files read, in order (the last may be cut).
        root: the directory they were read from.
        python: the interpreter version whose stdlib it is (``platform.python_version()``).
    """

    train: Tensor
    valid: Tensor
    vocab: tuple[int, ...]
    files: tuple[str, ...]
    root: str
    python: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, tokens: Tensor) -> str:
        """The text of ``tokens`` (UTF-8, undecodable bytes replaced)."""
        table = torch.tensor(self.vocab, dtype=torch.uint8)
        return bytes(table[tokens.long()].tolist()).decode("utf-8", errors="replace")


def source_files(root: str | os.PathLike[str]) -> list[Path]:
    """``*.py`` files under ``root`` in sorted order of relative path, installed packages skipped."""
    base = Path(root)
    found = [
        p
        for p in base.rglob("*.py")
        if p.is_file() and not any(part in EXCLUDED for part in p.relative_to(base).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def _read(files: list[Path], max_bytes: int) -> tuple[bytes, list[Path]]:
    chunks: list[bytes] = []
    used: list[Path] = []
    size = 0
    for path in files:
        if size >= max_bytes:
            break
        data = path.read_bytes()[: max_bytes - size]
        chunks.append(data)
        used.append(path)
        size += len(data)
    return b"".join(chunks), used


def stdlib_corpus(
    max_bytes: int = 1_000_000,
    valid_fraction: float = 0.1,
    root: str | os.PathLike[str] | None = None,
) -> TextCorpus:
    """The first ``max_bytes`` bytes of the stdlib's Python sources, tokenized and split.

    Args:
        max_bytes: size of the subset in bytes (whole files in sorted order, the last one cut).
        valid_fraction: share of the token stream, taken from its end, kept for validation;
            strictly between 0 and 1.
        root: directory to read instead of ``sysconfig.get_paths()["stdlib"]``.

    Returns:
        A :class:`TextCorpus`.

    Raises:
        ValueError: on a non-positive ``max_bytes``, a ``valid_fraction`` outside (0, 1), a
            missing ``root``, or a corpus too small to give both splits a token.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 2:
        raise ValueError(f"`max_bytes` must be an integer >= 2, got {max_bytes!r}")
    if not 0.0 < float(valid_fraction) < 1.0:
        raise ValueError(f"`valid_fraction` must be in (0, 1), got {valid_fraction!r}")
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise ValueError(f"`root` must be an existing directory, got {str(base)!r}")
    data, used = _read(source_files(base), max_bytes)
    cut = int(round(len(data) * (1.0 - float(valid_fraction))))
    if cut < 1 or cut >= len(data):
        raise ValueError(
            f"the corpus under {str(base)!r} has {len(data)} bytes: too few for a "
            f"train/validation split at valid_fraction={valid_fraction}"
        )
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    vocab = torch.unique(raw)  # sorted
    ids = torch.searchsorted(vocab, raw)
    return TextCorpus(
        train=ids[:cut].clone(),
        valid=ids[cut:].clone(),
        vocab=tuple(int(v) for v in vocab),
        files=tuple(p.relative_to(base).as_posix() for p in used),
        root=str(base),
        python=platform.python_version(),
    )


def windows(
    tokens: Tensor, context: int, count: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``count`` random windows of ``context`` tokens and their next-token targets.

    Returns ``(inputs, targets)`` of shape ``(count, context)``, ``targets[:, t] =
    tokens[start + t + 1]``; starts are uniform on ``[0, len(tokens) - context - 1]``.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"`context` must be an integer >= 1, got {context!r}")
    if tokens.dim() != 1 or tokens.numel() < context + 1:
        raise ValueError(
            f"`tokens` must be 1-D with at least context + 1 = {context + 1} entries, "
            f"got shape {tuple(tokens.shape)}"
        )
    starts = torch.randint(0, tokens.numel() - context, (count,), generator=generator)
    index = starts[:, None] + torch.arange(context + 1)
    chunk = tokens[index]
    return chunk[:, :-1], chunk[:, 1:]
