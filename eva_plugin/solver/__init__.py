"""The solver: preference pairs from scored samples, and one preference-optimisation round."""
