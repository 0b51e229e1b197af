"""`python analyze_dataset.py` still works: it runs `python -m tools.analyze_dataset`, its new place."""
from commons import run_cli
from tools.analyze_dataset import main

if __name__ == "__main__":
    run_cli(main)
