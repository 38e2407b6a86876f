"""Frames to verdicts: the engine every path scores through (engine.py), the k-NN normality scorer and its
calibration (knn.py), and the clip folds that calibration cross-fits on (folds.py)."""
