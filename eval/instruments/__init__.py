"""Package data: the built-in wellbeing instruments (probe wording), one JSON file per version."""
