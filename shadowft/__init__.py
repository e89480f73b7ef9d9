"""Shadow-FT: tune the base model, graft its update onto the instruct model."""
