"""nldseg: unsupervised, online time-series segmentation by Neural Langevin Dynamics.

The wells of a learned energy landscape are the discrete states of a switching
system. See :class:`LangevinSegmenter`; helpers live in the submodules
:mod:`nldseg.metrics`, :mod:`nldseg.datasets` and :mod:`nldseg.plotting`.
"""

from nldseg._estimator import LangevinSegmenter
from nldseg._landscape import EnergyLandscape

__version__ = "0.1.0"

__all__ = ["EnergyLandscape", "LangevinSegmenter", "__version__"]
