"""nldseg: unsupervised, online time-series segmentation by Neural Langevin Dynamics.

The wells of a learned energy landscape are the discrete states of a switching
system. See :class:`LangevinSegmenter`; helpers live in the submodules
:mod:`nldseg.metrics`, :mod:`nldseg.datasets`, :mod:`nldseg.preprocessing` and
:mod:`nldseg.plotting`.
"""

from nldseg._estimator import LangevinSegmenter
from nldseg._inference import SegmentationStream
from nldseg._landscape import EnergyLandscape
from nldseg._persistence import InconsistentVersionWarning
from nldseg._version import __version__

__all__ = ["EnergyLandscape", "InconsistentVersionWarning", "LangevinSegmenter",
           "SegmentationStream", "__version__"]
