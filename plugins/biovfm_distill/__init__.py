"""Distillation from a frozen teacher (``--objective distill``)."""
