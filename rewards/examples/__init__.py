"""Worked examples of user rewards: read them, copy them, name them in a recipe by `path:`."""
