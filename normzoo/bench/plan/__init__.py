"""Plan: the typed experiment config, presets, grid expansion and cost estimates."""
