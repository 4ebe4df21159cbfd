"""Measurements: reconstruction, codebook health, likelihood and sample quality."""
