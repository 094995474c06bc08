"""Topic names of the node's interface, relative so that namespaces and remappings apply."""

RGB_IMAGE = "rgb/image"
RGB_COMPRESSED = "rgb/image/compressed"
THERMAL_IMAGE = "thermal/image"
THERMAL_COMPRESSED = "thermal/image/compressed"

SEMANTIC = "semantic"
SEMANTIC_COLOR = "semantic/color"
DETECTIONS = "detections"
DETECTIONS_VISION = "detections/vision"
STATUS = "status"
CLASSES = "classes"
DIAGNOSTICS = "/diagnostics"

#: Ground truth a recording may carry beside the camera topics (``rgbt-make-bag`` writes them).
LABEL = "labels/image"
LABEL_BOXES = "labels/boxes"

OUTPUTS = (SEMANTIC, SEMANTIC_COLOR, DETECTIONS, DETECTIONS_VISION, STATUS, CLASSES, DIAGNOSTICS)
