"""Entry points: the `welfare` command (train/cli.py) and its subcommands, and the one config loader.

Nothing imports train/; it wires eval/, interventions/ and ledger/ together.
"""
