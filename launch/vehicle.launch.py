"""Launch the RGB-thermal perception node for a vehicle.

    ros2 launch rgbt_perception vehicle.launch.py rgb_topic:=/camera/color/image_raw \
        thermal_topic:=/thermal/image_raw weights:=/path/to/model.safetensors device:=cuda

Every process this launch starts uses the Fast DDS profile for camera-size frames
(config/fastdds_large_frames.xml; ``fastdds_profile:=''`` keeps Fast DDS's defaults). Camera
drivers started elsewhere need the same profile: see docs/node.md ("Large frames").
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

PROFILE = "fastdds_large_frames.xml"


def fastdds_profile_variable() -> str:
    """Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE; Fast DDS 3 FASTDDS_..."""
    if os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy"):
        return "FASTRTPS_DEFAULT_PROFILES_FILE"
    return "FASTDDS_DEFAULT_PROFILES_FILE"


def default_profile(share: str) -> str:
    """The installed profile, else the one next to this file's source (a symlink install)."""
    installed = os.path.join(share, "config", PROFILE)
    if os.path.isfile(installed):
        return installed
    source = os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "config", PROFILE))
    return source if os.path.isfile(source) else ""


def perception_node(context: LaunchContext) -> list[Node]:
    """The node, with the calibration file's parameters over the params file's when one is given."""
    parameters: list = [LaunchConfiguration("params_file").perform(context)]
    calibration = LaunchConfiguration("calibration_file").perform(context)
    if calibration:
        parameters.append(calibration)
    parameters.append({"weights": LaunchConfiguration("weights"), "device": LaunchConfiguration("device")})
    node = Node(
        package="rgbt_perception",
        executable="rgbt_node",
        name="rgbt_perception",
        namespace=LaunchConfiguration("namespace"),
        parameters=parameters,
        remappings=[
            ("rgb/image", LaunchConfiguration("rgb_topic")),
            ("rgb/image/compressed", [LaunchConfiguration("rgb_topic"), "/compressed"]),
            ("thermal/image", LaunchConfiguration("thermal_topic")),
            ("thermal/image/compressed", [LaunchConfiguration("thermal_topic"), "/compressed"]),
        ],
        output="screen",
        emulate_tty=True,
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("rgbt_perception")
    arguments = [
        DeclareLaunchArgument("weights", default_value="",
                              description="Node weights file (.safetensors); empty = the shipped demo weights"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("rgb_topic", default_value="/camera/rgb/image_raw",
                              description="RGB image topic (sensor_msgs/Image; any colour encoding, Bayer, YUV)"),
        DeclareLaunchArgument("thermal_topic", default_value="/camera/thermal/image_raw",
                              description="Thermal image topic (sensor_msgs/Image, mono8/mono16/16UC1/32FC1)"),
        DeclareLaunchArgument("namespace", default_value="perception", description="Namespace of the node"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "vehicle.yaml"),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="Parameters file written by rgbt-calibrate (thermal_to_rgb), applied "
                                          "after params_file; empty = none"),
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile(share),
                              description="Fast DDS XML profile for camera-size frames, set for every process "
                                          "of this launch; empty = Fast DDS defaults"),
    ]
    profile = SetEnvironmentVariable(
        fastdds_profile_variable(), LaunchConfiguration("fastdds_profile"),
        condition=UnlessCondition(PythonExpression(["'", LaunchConfiguration("fastdds_profile"), "' == ''"])),
    )
    return LaunchDescription([*arguments, profile, OpaqueFunction(function=perception_node)])
