"""modescape: the geometry of neural-network loss landscapes.

Points in weight space (`space`), families of points (`families`), one evaluator (`evaluate`);
methods on top: landscapes, mode connectivity, symmetry, curvature. See docs/architecture.md.
"""

__version__ = "0.1.0"
