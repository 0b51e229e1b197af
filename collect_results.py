"""`python collect_results.py` still works: it runs `python -m tools.collect_results`, its new place."""
from commons import run_cli
from tools.collect_results import main

if __name__ == "__main__":
    run_cli(main)
