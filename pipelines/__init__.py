"""Runnable recipes that only compose library calls (demo, paper recipes, ablations)."""
