"""Support for benchmarks/compress.py: a templated radiology-report corpus and a small Llama LM trained on it."""
