"""vtp-export: static-shape visual-token pruning inside exported VLM vision graphs."""

__version__ = "0.1.0"
