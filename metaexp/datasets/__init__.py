"""Data sets: each returns tensors per split and knows nothing about episodes."""
