"""The package's version: what `ratio-fast --version` prints and setup.py reads (as text)."""
__version__ = "0.1.0"
