"""Normality model: what normal footage looks like per token (fit offline, loaded by the worker).

Entry point: `streamvad.normality.model.NormalityModel` (fit / save / load / from_chroma).
"""
