"""OpenCompass dataset configs that OpenCompass 0.5.4 lacks, in its own format (mmengine config files)."""
