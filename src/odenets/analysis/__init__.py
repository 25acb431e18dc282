"""odenets.analysis."""
