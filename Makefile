# Shortcuts for the scripts in scripts/, which do their own set-up.
.PHONY: demo test lint bench dashboards

demo:
	scripts/demo

test:
	scripts/test

lint:
	scripts/setup dev
	.venv/bin/ruff check
	.venv/bin/mypy

bench:
	scripts/setup dev
	.venv/bin/python bench/run.py

dashboards:
	scripts/setup dev
	.venv/bin/python grafana/generate.py
