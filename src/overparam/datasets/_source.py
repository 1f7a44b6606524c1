"""Where dataset files come from: an explicit path, ``$OVERPARAM_DATA``, or a download."""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

ENV = "OVERPARAM_DATA"


def data_dir(path: str | os.PathLike[str] | None, subdir: str) -> Path:
    """The directory holding a dataset's files.

    ``path`` wins when given (it may be the dataset directory itself or its parent); otherwise
    ``$OVERPARAM_DATA/<subdir>``; otherwise ``~/.cache/overparam/<subdir>`` (created, the target of
    downloads).
    """
    if path is not None:
        if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
            raise ValueError(
                f"`path` must be a str or os.PathLike directory, got {type(path).__name__} {path!r}"
            )
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ValueError(f"`path` must be an existing directory, got {str(root)!r}")
        return root / subdir if (root / subdir).is_dir() else root
    env = os.environ.get(ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise ValueError(f"${ENV} must name an existing directory, got {env!r}")
        return root / subdir
    cache = Path.home() / ".cache" / "overparam" / subdir
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically; ``OSError`` with the URL when offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a unique partial name: concurrent downloads of one file never write into each other
    fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not download {url} to {dest}: {error}") from error
    tmp.replace(dest)
    return dest
