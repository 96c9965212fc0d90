"""Read the generated dashboards back: their panels, queries and variable references.

Used by the tests to check every query the way Grafana would send it to Prometheus: the
variables and Grafana's macros are replaced by values first. Standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# The three spellings Grafana interpolates: $name, ${name}, ${name:format} (and the
# deprecated [[name]]); names are word characters, so $job_id is never read as $job.
VARIABLE_REFERENCE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::\w+)?\]\]|\$\{(\w+)(?:\.[^:}]+)?(?::[^}]+)?\}"
)

# Values for Grafana's own macros when a query is run outside Grafana.
MACROS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600"}

# A Prometheus vector selector: metric name, then its matchers in braces.
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
RANGE = re.compile(r"\[([^\]]+)\]")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


@dataclass(frozen=True)
class Query:
    """One panel query: where it is and its expression as written in the dashboard."""

    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, Json]:
    """Every dashboard in `directory`, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: Json) -> Iterator[Query]:
    """Every panel query of a dashboard."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(
                dashboard=dashboard["uid"],
                panel=panel["title"],
                ref=target["refId"],
                expr=target["expr"],
                instant=bool(target.get("instant")),
            )


def variables(dashboard: Json) -> list[Json]:
    """The dashboard's template variables, in declaration order."""
    variable_list: list[Json] = dashboard["templating"]["list"]
    return variable_list


def variable_query(variable: Json) -> str:
    """The query text of a query variable (Grafana stores it as a string or an object)."""
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def label_values_selector(query: str) -> tuple[str, str]:
    """Split `label_values(selector, label)` into the series selector and the label."""
    match = LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values query: {query}")
    return match.group(1), match.group(2)


def referenced_variables(text: str) -> set[str]:
    """Names of the variables and macros `text` refers to."""
    return {
        next(group for group in match.groups() if group)
        for match in VARIABLE_REFERENCE.finditer(text)
    }


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Replace variables and macros the way Grafana does before sending a query."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return {**MACROS, **values}[name]

    return VARIABLE_REFERENCE.sub(value, text)


def default_values(dashboard: Json) -> dict[str, str]:
    """Each variable's default value as a query sees it; 'All' becomes its regex."""
    values = {}
    for variable in variables(dashboard):
        current = variable.get("current", {}).get("value", "")
        if current in (["$__all"], "$__all"):
            current = variable["allValue"]
        values[variable["name"]] = current if isinstance(current, str) else "|".join(current)
    return values


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers) of every vector selector in a PromQL expression."""
    return SELECTOR.findall(expr)


def ranges(expr: str) -> list[str]:
    """The durations of every range selector in a PromQL expression."""
    return RANGE.findall(expr)
