"""Dataset loaders reading an explicit path or ``$OVERPARAM_DATA``."""
