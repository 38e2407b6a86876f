"""Offline work on the live code path: fit, replay and eval (pipeline.py), frame and event metrics, reports,
and the end-to-end demo."""
