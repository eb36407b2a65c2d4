"""Measurements behind `make compare`: training, artifacts, in-process inference, serving, the article's questions."""
