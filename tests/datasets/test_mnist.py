"""MNIST loader: IDX parsing and integrity checks on synthetic files; the real files when present."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from overparam.datasets.mnist import IMAGE_MAGIC, LABEL_MAGIC, mnist, read_idx

DATA = Path(os.environ.get("OVERPARAM_DATA", "../shared/data")) / "mnist"


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An IDX file written independently of the reader: big-endian header, then raw bytes."""
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_gz_and_raw(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(IMAGE_MAGIC, images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(IMAGE_MAGIC, images)))
    for name in ("a", "a.gz"):
        assert np.array_equal(read_idx(tmp_path / name, IMAGE_MAGIC, (7, 28, 28)), images)


def test_integrity_errors(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    (tmp_path / "l").write_bytes(idx_bytes(LABEL_MAGIC, labels))
    with pytest.raises(ValueError, match=r"must have magic number 0x00000803, got 0x00000801"):
        read_idx(tmp_path / "l", IMAGE_MAGIC, (10,))
    with pytest.raises(ValueError, match=r"must hold sizes \(11,\), got \(10,\)"):
        read_idx(tmp_path / "l", LABEL_MAGIC, (11,))
    (tmp_path / "t").write_bytes(idx_bytes(LABEL_MAGIC, labels)[:-1])
    with pytest.raises(ValueError, match=r"must have 18 bytes, got 17"):
        read_idx(tmp_path / "t", LABEL_MAGIC, (10,))
    with pytest.raises(ValueError, match=r"`split` must be one of \('train', 'test'\), got 'val'"):
        mnist("val", path=tmp_path)


def test_explicit_path_raw_files(tmp_path):
    """A directory of raw (uncompressed) test-split files, read through ``path=``."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(10000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=10000, dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(IMAGE_MAGIC, images))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(LABEL_MAGIC, labels))
    x, y = mnist("test", path=tmp_path, download=False)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32) / 255))
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\(.gz\) not found"):
        mnist("train", path=tmp_path, download=False)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"MNIST data directory {DATA} is absent")
def test_real_mnist():
    x, y = mnist("test", path=DATA, download=False)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # the published class counts of the MNIST test set
    assert y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    xs, ys = mnist("train", path=DATA, download=False)
    assert xs.shape == (60000, 28, 28)
    assert ys[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first labels
    assert ys.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize(
    "content",
    [
        gzip.compress(idx_bytes(LABEL_MAGIC, np.arange(10, dtype=np.uint8)))[:-6],  # truncated
        b"\x1f\x8b\x08\x00garbage that is no deflate stream",  # gzip magic, corrupt body
        b"not gzip at all",
    ],
)
def test_corrupt_gzip_names_the_file_and_the_remedy(tmp_path, content):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(content)
    message = rf"MNIST file {path} is not a readable gzip file .*: delete it"
    with pytest.raises(ValueError, match=message):
        read_idx(path, LABEL_MAGIC, (10,))


def test_path_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="`path` must be an existing directory"):
        mnist("test", path=tmp_path / "file", download=False)


@pytest.mark.parametrize("path", [3, b"data", ["data"]])
def test_path_must_be_a_string_or_path(path):
    with pytest.raises(ValueError, match=r"`path` must be a str or os.PathLike directory, got "):
        mnist("test", path=path, download=False)
