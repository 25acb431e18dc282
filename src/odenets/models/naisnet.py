"""NAIS-Net (being written)."""
