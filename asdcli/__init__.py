"""asdcli: first-shot unsupervised anomalous sound detection (DCASE 2025 Task 2)."""

__version__ = "0.1.0"
