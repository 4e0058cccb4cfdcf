"""Benchmarks against named anchors; each module runs as `python -m bench.<name>` or as a script."""
