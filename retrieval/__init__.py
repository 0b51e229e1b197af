"""Descriptors to recalls: feature extraction and recall@N, faiss indexes, PCA, test-time methods."""
