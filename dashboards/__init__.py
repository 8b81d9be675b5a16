"""Grafana dashboards (JSON, built by code) and the code that provisions or pushes them."""
