"""Distributed training: the world layout and score synchronisation across ranks."""
