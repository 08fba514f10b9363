"""Benchmark harness for mirror (issue 4): `python -m bench`, see bench/README.md."""
