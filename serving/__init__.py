"""The servers and clients: they read exported artifacts and never import the pipelines' model code."""
