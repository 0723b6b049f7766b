"""Managed deployments: mxn launches engines on chips (recipes), places their replicas (on this machine, or on a
Ray cluster) and registers each running replica as an endpoint of its deployment."""
