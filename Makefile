# The two entry points the README opens with. Both create .venv on first use with the exact tested
# versions of constraints.txt (about 4 minutes here: torch 2.14.1 + torchvision 0.29.1 install from this
# machine's local wheel files).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	$(VENV)/bin/pip check
	touch $(STAMP)

# Main job: the whole offline demo (corpus -> extract -> distill -> evaluate -> report) via DVC.
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro
	@$(VENV)/bin/python -c "from pipeline.params import read_params; p = read_params('params.yaml'); print('report:', p.report.out / 'report.md')"

# The test suite (the same command .ci/run runs).
# pytest exits 5 when it collects no tests: a failure here, said so (make itself then exits 2).
test: $(STAMP)
	@$(VENV)/bin/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; exit $$rc

# The linter, as pyproject.toml [tool.ruff] configures it (.ci/run runs it before the tests).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
