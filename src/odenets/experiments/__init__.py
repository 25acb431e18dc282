"""odenets.experiments."""
