"""Embeddings -> KNN banks -> anomaly scores and decisions."""
