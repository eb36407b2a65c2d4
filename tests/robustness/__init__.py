"""Hostile-client tests for every server: malformed bodies, slow and idle clients, poisoned batches, corrupt versions, SIGTERM."""
