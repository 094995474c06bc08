"""The node's texts and descriptors about the ROS graph: parameter descriptors, image QoS, and the
incompatible-QoS reports that name both sides (ROS message types only, no node state)."""
from __future__ import annotations

from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

_WHEN = {"live": "applies immediately", "configure": "applies at the next configure",
         "activate": "applies at the next activate"}


def parameter_descriptor(spec: Any) -> ParameterDescriptor:
    """The ``ParameterDescriptor`` of a :class:`rgbt_perception.node.parameters.ParameterSpec`."""
    text = spec.description + ("" if spec.read_only else f" ({_WHEN[spec.when]})")
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    descriptor = ParameterDescriptor(description=text, read_only=spec.read_only)
    if spec.value_range is not None:
        low, high = spec.value_range
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return descriptor


def image_qos(reliability: str, depth: int) -> QoSProfile:
    """The image subscriptions' QoS: keep-last ``depth``, volatile, ``reliable`` or best effort."""
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def node_label(endpoint: Any) -> str:
    if "_UNKNOWN_" in endpoint.node_name:
        return "a node of unknown name"
    return f"{endpoint.node_namespace.rstrip('/')}/{endpoint.node_name}"


def describe_qos(profile: QoSProfile) -> str:
    return f"reliability={profile.reliability.name.lower()}, durability={profile.durability.name.lower()}"


def names_pending(endpoints: Sequence[Any]) -> bool:
    """Node names reach the graph a moment after the endpoints: True while some are still unknown."""
    return any("_UNKNOWN_" in e.node_name for e in endpoints)


def requested_incompatible_text(topic: str, requested: QoSProfile, publishers: Sequence[Any], info: Any) -> str:
    offers = [f"{node_label(p)} offers {describe_qos(p.qos_profile)}" for p in publishers]
    policy = str(getattr(info.last_policy_kind, "name", info.last_policy_kind)).lower()
    policy = policy.replace("rmw_qos_policy_", "")
    return (f"incompatible QoS on {topic} ({policy}): this node requests {describe_qos(requested)}; "
            f"publisher: {'; '.join(offers) or 'unknown'}. No frames arrive until they match (parameter "
            f"qos.reliability).")


def offered_incompatible_text(topic: str, offered: QoSProfile, subscriptions: Sequence[Any]) -> str:
    requests = [f"{node_label(s)} requests {describe_qos(s.qos_profile)}" for s in subscriptions]
    return (f"incompatible QoS on {topic}: this node offers {describe_qos(offered)}; "
            f"subscriber: {'; '.join(requests) or 'unknown'}")
