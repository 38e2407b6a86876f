"""Normal motion per place: how fast and which way things move at each cell of a camera's view.

`flow` measures it between a camera's consecutive sampled frames (`MotionTracker`, the only state the
live worker keeps per camera for it); `model` remembers the normal velocities of every cell and scores
new ones by their distance to them; `fusion` combines that with the appearance scorer's verdicts.
"""

from streamvad.motion.flow import MotionTracker, cell_motion
from streamvad.motion.fusion import FusedScorer
from streamvad.motion.model import MotionModel

__all__ = ["FusedScorer", "MotionModel", "MotionTracker", "cell_motion"]
