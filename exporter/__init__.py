"""Prometheus exporter for the imports that the CSE runs on completed CTS jobs."""

__version__ = "0.1.0"
