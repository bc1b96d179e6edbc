"""capatlas: which parts of a pretraining corpus gave a model a capability."""

__version__ = "0.1.0"
