"""Live serving: `serve` and its processes (readers, workers, the events process), the site's routing of
cameras to workers and their models (fleet.py), health and metrics, and tamper checks."""
