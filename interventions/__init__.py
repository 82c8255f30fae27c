"""Welfare-offset interventions: exposure episodes and their balance (exposure), LoRA offsets' data and
trainers (lora), the euphoric soft prompt (soft_prompt). welfare_offsets.train runs them as sessions under a
ledger budget."""
