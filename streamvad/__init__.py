"""StreamVAD: real-time video anomaly detection from frozen vision-transformer embeddings."""

__version__ = "0.1.0"
