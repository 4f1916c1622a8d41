"""anobench: reproduce, compare and regress unsupervised visual anomaly detection methods."""

__version__ = "0.1.0"
