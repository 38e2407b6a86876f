"""What one fitted model directory (a model store version, or `fit --out`) holds, so every module that reads
or writes one finds the same parts: the appearance memory in `normality/`, the motion part in `motion/`."""

NORMALITY_DIR = "normality"
MOTION_DIR = "motion"
