"""Welfare-offset interventions (exposure sessions, LoRA offsets, soft prompts): the next issue builds them."""
