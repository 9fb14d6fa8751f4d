"""The synthetic data generator: the project's only source of personal-looking data (never real data)."""
