"""Evaluation: frozen features, linear probe / kNN / fine-tuning, metrics, results."""
