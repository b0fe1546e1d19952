"""fanout's benchmark, by concern; bench/run.py is its entry point (see bench/README.md)."""
