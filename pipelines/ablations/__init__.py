"""Ablation configs of the paper (TOML files; no code)."""
