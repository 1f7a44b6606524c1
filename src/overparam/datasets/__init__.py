"""Dataset loaders reading an explicit path or ``$OVERPARAM_DATA``.

* :func:`gas_sensor` -- UCI Gas Sensor Array Drift at Different Concentrations (Ethanol by default);
  :func:`gas_sensor_batches` per batch, :func:`batch_sources` which files were read.
* :func:`mnist` -- the four standard MNIST IDX files (gz or raw).
* :func:`stdlib_corpus` -- a byte-level text corpus read offline from the Python standard
  library's own ``*.py`` sources.
"""

from overparam.datasets.gas_sensor import (
    BatchSources,
    MissingBatchesWarning,
    batch_sources,
    gas_sensor,
    gas_sensor_batches,
)
from overparam.datasets.mnist import mnist
from overparam.datasets.text import TextCorpus, stdlib_corpus

__all__ = [
    "BatchSources",
    "MissingBatchesWarning",
    "TextCorpus",
    "batch_sources",
    "gas_sensor",
    "gas_sensor_batches",
    "mnist",
    "stdlib_corpus",
]
