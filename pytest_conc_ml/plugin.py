"""pytest entry point of conc-ml (options and hooks arrive with the plugin issue)."""
