"""Dataset loaders reading an explicit path or ``$OVERPARAM_DATA``.

* :func:`gas_sensor` -- UCI Gas Sensor Array Drift at Different Concentrations (Ethanol by default).
* :func:`mnist` -- the four standard MNIST IDX files (gz or raw).
"""

from overparam.datasets.gas_sensor import gas_sensor
from overparam.datasets.mnist import mnist

__all__ = ["gas_sensor", "mnist"]
