"""Inference: the paper's test protocol over a split (protocol.py)."""
