"""Shared test set-up: kept minimal; fixtures of one area live in that area's test file."""
import os

# Figures in tests (and in notebooks they run) render off-screen.
os.environ.setdefault("MPLBACKEND", "Agg")
