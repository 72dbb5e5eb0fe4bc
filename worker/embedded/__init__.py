"""The embedded models: tiny, randomly initialised but structurally real checkpoints built locally
(``python -m worker.embedded DIR --name NAME``), so the service runs and is tested without weights."""
