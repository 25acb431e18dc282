"""odenets.robustness."""
