"""Reading a Prometheus text exposition in tests: every sample keyed by name and labels."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics import ExporterMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def samples(metrics: ExporterMetrics) -> Samples:
    """The samples an in-process exporter would serve now."""
    return parse(generate_latest(metrics.registry).decode())


def value(found: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError when the series is absent."""
    return found[(name, frozenset(labels.items()))]


def series(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of one metric name, by label set."""
    return {labels: v for (n, labels), v in found.items() if n == name}
