"""`python -m tools.benchmark`: the speed benchmark (tools/benchmark/run.py)."""
from commons import run_cli
from tools.benchmark.run import main

if __name__ == "__main__":
    run_cli(main)
