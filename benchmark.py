"""`python benchmark.py` still works: it runs `python -m tools.benchmark`, its new place."""
from commons import run_cli
from tools.benchmark.run import main

if __name__ == "__main__":
    run_cli(main)
