"""Fused log-prob and policy-gradient kernels at selected rows (see reference.py for the math)."""
