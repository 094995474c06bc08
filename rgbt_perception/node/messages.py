"""Building the node's output messages from engine results (ROS message types, no node state)."""
from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rgbt_msgs.msg import ClassList, Detection2D, Detection2DArray, PerceptionStatus

try:  # trackers and RViz read vision_msgs; publish it wherever it exists
    from vision_msgs.msg import Detection2D as VisionDetection2D  # type: ignore[import-not-found]
    from vision_msgs.msg import Detection2DArray as VisionDetection2DArray  # type: ignore[import-not-found]
    from vision_msgs.msg import ObjectHypothesisWithPose  # type: ignore[import-not-found]
except ImportError:
    VisionDetection2DArray = None


def detections_message(header: Any, detections: list[Any]) -> Detection2DArray:
    """``rgbt_msgs/Detection2DArray`` of engine detections (pixels of the output image)."""
    return Detection2DArray(header=header, detections=[
        Detection2D(class_id=int(d.class_id), label=str(d.label), score=float(d.score), x_min=float(d.x_min),
                    y_min=float(d.y_min), x_max=float(d.x_max), y_max=float(d.y_max))
        for d in detections
    ])


def vision_detections_message(header: Any, detections: list[Any]) -> Any:
    """``vision_msgs/Detection2DArray`` (box centre and size, label as class id)."""
    out = VisionDetection2DArray(header=header)
    for d in detections:
        det = VisionDetection2D(header=header)
        det.bbox.center.position.x = (d.x_min + d.x_max) / 2.0
        det.bbox.center.position.y = (d.y_min + d.y_max) / 2.0
        det.bbox.size_x = float(d.x_max - d.x_min)
        det.bbox.size_y = float(d.y_max - d.y_min)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(d.label)
        hypothesis.hypothesis.score = float(d.score)
        det.results.append(hypothesis)
        out.detections.append(det)
    return out


def class_list_message(class_names: list[str], palette: list[tuple[int, int, int]], stamp: Any) -> ClassList:
    msg = ClassList(names=list(class_names), palette=[int(c) for colour in palette for c in colour])
    msg.header.stamp = stamp
    return msg


def status_message(fields: dict[str, Any], stamp: Any, frame_id: str) -> PerceptionStatus:
    status = PerceptionStatus(**fields)
    status.header.stamp = stamp
    status.header.frame_id = frame_id
    return status


def diagnostics_message(name: str, level: int, message: str, hardware_id: str, values: dict[str, str],
                        stamp: Any) -> DiagnosticArray:
    diagnostics = DiagnosticArray()
    diagnostics.header.stamp = stamp
    diagnostics.status = [DiagnosticStatus(
        level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )]
    return diagnostics
