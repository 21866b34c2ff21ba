"""Cluster plumbing: starting/joining Ray, resource requests for every role (one place), cluster configs."""
