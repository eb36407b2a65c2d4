"""Deployment of the three servers and the training jobs on Kubernetes, KServe and Kubeflow, and their checks."""
