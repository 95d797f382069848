"""BiSMAP: bidirectional self-training with multiple anisotropic prototypes."""

__version__ = "0.1.0"
