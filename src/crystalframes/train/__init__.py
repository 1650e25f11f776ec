"""Training: config, data preparation, the Lightning module and the run orchestration."""
