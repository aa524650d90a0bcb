"""Prefect flows: thin outlines over ``pipeline`` functions. Deployments in prefect.yaml."""
