# The two commands of the README: `make demo` and `make test`. Both set up a fresh
# machine first (Debian packages with apt, then a virtualenv in .venv).
.PHONY: setup demo test bench clean

setup:
	bash ci/install-system.sh
	bash ci/install-python.sh

demo: setup
	.venv/bin/cpldask demo

test: setup
	bash ci/test.sh

bench: setup
	.venv/bin/python bench/run.py --quick

clean:
	rm -rf .venv build *.egg-info .pytest_cache
