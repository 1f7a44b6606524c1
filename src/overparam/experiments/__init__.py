"""Registered experiments, one module per family; each module calls ``engine.register``."""
