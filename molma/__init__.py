"""molma: multi-objective alignment of language models, and safe RL under human oversight.

Reading order follows the data flow (see README "Architecture"): ``molma.data`` -> ``molma.models`` ->
``molma.rewards`` -> ``molma.rl`` -> ``molma.gradients`` -> ``molma.eval``; ``molma.humaneval`` and
``molma.mbhi`` stand apart.
"""

__version__ = "0.3.0"
