"""Turn a label map into what clients asked for: PNGs, an overlay, polygons, statistics.

Every function is pure (no shared state) and safe to call from worker threads.
"""

from service.core.outputs.masks import (
    DEFAULT_PNG_COMPRESS_LEVEL,
    encode_color_png,
    encode_labels_png,
    encode_overlay,
    palette_lut,
)
from service.core.outputs.polygons import polygons_geojson
from service.core.outputs.render import OUTPUTS, render
from service.core.outputs.stats import class_counts, class_name, class_stats, classes_present

__all__ = [
    "DEFAULT_PNG_COMPRESS_LEVEL",
    "OUTPUTS",
    "class_counts",
    "class_name",
    "class_stats",
    "classes_present",
    "encode_color_png",
    "encode_labels_png",
    "encode_overlay",
    "palette_lut",
    "polygons_geojson",
    "render",
]
