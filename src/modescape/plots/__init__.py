"""Every figure modescape draws, and nothing else draws: methods return results, these functions turn
results into files (one atomic save, `base`).

* `landscape`: 1-D lines, 2-D contours, heatmaps and 3-D surfaces, convexity maps, the interactive HTML,
  VTK export (`plot_result` draws every figure that fits a result);
* `paths`: metrics along paths, the plane through a curve, swap paths, alignments;
* `curvature`: Hessian spectral densities;
* `correlate`: sharpness measures against the generalisation gap.
* `ensembles`: ensemble metrics as members are added, reliability diagrams, SGD iterates against SWA.
* `topology`: persistence diagrams, merge trees and minima of a landscape (`modescape.topology`).
* `volumes`: planes through simplices and wedges, the intrinsic-dimension curve, the radial experiment.
* `bench`: benchmark measurements (time against size, ``bench/scaling.py``).
"""

from .base import pyplot, save_figure, save_html, save_text
from .bench import plot_scaling
from .correlate import plot_correlation
from .curvature import plot_density
from .ensembles import plot_ensemble, plot_reliability, plot_swa
from .landscape import export_vtk, plot_convexity, plot_line, plot_result, plot_surface, write_html
from .paths import plot_alignment, plot_fge, plot_paths, plot_plane, plot_swap
from .topology import plot_merge_tree, plot_minima, plot_persistence_diagram, plot_topology, plot_topology_panel
from .volumes import plot_intrinsic_dimension, plot_radial, plot_simplex_plane, plot_wedge

__all__ = [
    "export_vtk",
    "plot_alignment",
    "plot_fge",
    "plot_convexity",
    "plot_correlation",
    "plot_density",
    "plot_line",
    "plot_paths",
    "plot_plane",
    "plot_result",
    "plot_surface",
    "plot_swap",
    "pyplot",
    "save_figure",
    "save_html",
    "save_text",
    "write_html",
]
__all__ += ["plot_merge_tree", "plot_minima", "plot_persistence_diagram", "plot_topology", "plot_topology_panel"]
__all__ += ["plot_ensemble", "plot_reliability", "plot_swa"]
__all__ += ["plot_intrinsic_dimension", "plot_radial", "plot_simplex_plane", "plot_wedge"]
__all__ += ["plot_scaling"]
