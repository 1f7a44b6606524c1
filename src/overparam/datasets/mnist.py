"""The MNIST database of handwritten digits (LeCun, Cortes & Burges) from its four IDX files.

IDX format: a big-endian header ``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte), then
``ndim`` big-endian uint32 sizes, then the data.  Images: magic ``0x00000803``, sizes
``(count, 28, 28)``; labels: magic ``0x00000801``, size ``(count,)``.  Files may be gzip-compressed
(``.gz``) or raw.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from overparam.datasets._source import data_dir, download

SUBDIR = "mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
MIRRORS = (
    "http://yann.lecun.com/exdb/mnist/",  # canonical
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's mirror of the same files
)


def _locate(directory: Path, stem: str, allow_download: bool) -> Path:
    """``stem.gz`` or ``stem`` (also torchvision's ``stem`` with ``.`` for ``-``); else download."""
    for name in (
        f"{stem}.gz",
        stem,
        f"{stem.replace('-idx', '.idx')}.gz",
        stem.replace("-idx", ".idx"),
    ):
        if (directory / name).is_file():
            return directory / name
    if not allow_download:
        raise FileNotFoundError(f"MNIST file {stem}(.gz) not found in {directory}")
    errors = []
    for mirror in MIRRORS:
        try:
            return download(mirror + f"{stem}.gz", directory / f"{stem}.gz")
        except OSError as error:
            errors.append(str(error))
    raise FileNotFoundError(
        f"MNIST file {stem}(.gz) not found in {directory} and not downloadable: {'; '.join(errors)}"
    )


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed for ``.gz``; a corrupt archive is a ``ValueError``."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"MNIST file {path} is not a readable gzip file ({type(error).__name__}: {error}): "
            f"delete it to download it again, or replace it with an intact copy"
        ) from None


def read_idx(file: str | os.PathLike[str], magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Read an unsigned-byte IDX file and check its magic number and sizes.

    Args:
        file: path of the IDX file (``.gz`` is decompressed).
        magic: the expected magic number (``0x803`` images, ``0x801`` labels).
        shape: the expected sizes.

    Returns:
        A ``uint8`` array of shape ``shape``.

    Raises:
        ValueError: naming the file, for a corrupt or truncated ``.gz``, a wrong magic number,
            wrong sizes or a wrong length.
    """
    path = Path(file)
    raw = _read_bytes(path)
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"IDX file {path} must have magic number {magic:#010x}, got {found:#010x}")
    sizes = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if sizes != shape:
        raise ValueError(f"IDX file {path} must hold sizes {shape}, got {sizes}")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"IDX file {path} must have {expected} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def mnist(
    split: str = "train", path: str | os.PathLike[str] | None = None, download: bool = True
) -> tuple[Tensor, Tensor]:
    """The MNIST ``split``: images in ``[0, 1]`` and integer labels.

    Files are read from ``path`` (the ``mnist`` directory or its parent), else
    ``$OVERPARAM_DATA/mnist``, else ``~/.cache/overparam/mnist``; missing files are downloaded
    from the canonical source (then a mirror) when ``download`` and online.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000).
        path: directory holding the IDX files.
        download: fetch missing files.

    Returns:
        ``(images, labels)``: ``float32`` of shape ``(count, 28, 28)`` equal to ``byte / 255``, and
        ``int64`` of shape ``(count,)`` in ``0..9``.

    Example (reads or downloads the files, so it is not run as a doctest)::

        images, labels = mnist("test")
        images.shape, labels.shape  # (torch.Size([10000, 28, 28]), torch.Size([10000]))
    """
    if split not in FILES:
        raise ValueError(f"`split` must be one of {tuple(FILES)}, got {split!r}")
    directory = data_dir(path, SUBDIR)
    image_stem, label_stem, count = FILES[split]
    images = read_idx(_locate(directory, image_stem, download), IMAGE_MAGIC, (count, 28, 28))
    labels = read_idx(_locate(directory, label_stem, download), LABEL_MAGIC, (count,))
    if int(labels.max()) > 9:
        raise ValueError(f"MNIST labels must lie in 0..9, got maximum {int(labels.max())}")
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0))
    return x, torch.from_numpy(labels.astype(np.int64))
