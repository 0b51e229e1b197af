"""The whole study as one command (study.py): the plan (plan.toml, plan.py), its runner and its steps."""
