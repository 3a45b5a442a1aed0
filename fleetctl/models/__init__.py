"""Model weights, checkpoints and edge artifact builds (cloud/operator side; imports torch lazily)."""
