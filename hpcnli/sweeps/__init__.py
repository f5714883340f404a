"""Sweeps: a grid of recipes x seeds as ordinary runs (grid), and the report that compares them (compare)."""
