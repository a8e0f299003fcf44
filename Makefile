# portway: `make demo` shows it at work in a sandbox, `make test` runs every check.
# Both set up a fresh Debian 12 machine first (as root): packages, venv, install.

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-cluster test lint typecheck unit kernel bench reliability how-packets-move real-hosts-doc ipv6-doc audit-doc overlay-doc clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	$(PY) -m portway.demo

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q tests/unit

# Four tests at a time: most of a kernel test's time is spent waiting (on namespaces,
# processes, connections), and each runs in throwaway namespaces of its own.
test: setup lint typecheck
	$(VENV)/bin/pytest -q -n 4 tests

# The reliability and security tests again, written up as docs/reliability.md.
reliability: setup
	$(PY) scripts/reliability.py

# docs/how-packets-move.md: real `portway trace` output for each path, checked by real
# connections, in a throwaway host namespace.
how-packets-move: setup
	$(PY) scripts/how_packets_move.py

# The chapter "Debugging real hosts" of docs/how-packets-move.md: the trace scenario suite
# (tests/e2e/test_trace_scenarios.py), real problems rebuilt in throwaway namespaces, as
# each scenario saw it.
real-hosts-doc: setup
	$(PY) scripts/real_hosts_doc.py

# docs/ipv6.md: dual-stack and IPv6-only networks, real output, in a throwaway host
# namespace.
ipv6-doc: setup
	$(PY) scripts/ipv6_doc.py

# docs/audit.md: real `portway audit` output on a host like Docker's and on one portway
# built, each finding checked by a real connection, in a throwaway host namespace.
audit-doc: setup
	$(PY) scripts/audit_doc.py

# docs/overlay.md: two hosts (namespaces, each with its own portwayd) on an underlay, a real
# etcd, an overlay network across them, real output. demo-cluster shows the same run.
overlay-doc: setup
	$(PY) scripts/overlay_doc.py

demo-cluster: setup
	$(PY) scripts/overlay_doc.py --print

bench: setup
	bash bench/setup.sh
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
