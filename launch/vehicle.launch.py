"""Launch the RGB-thermal perception node for a vehicle.

    ros2 launch rgbt_perception vehicle.launch.py rgb_topic:=/camera/color/image_raw \
        thermal_topic:=/thermal/image_raw weights:=/path/to/model.safetensors device:=cuda
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("rgbt_perception")
    arguments = [
        DeclareLaunchArgument("weights", default_value="",
                              description="Node weights file (.safetensors); empty = the shipped demo weights"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("rgb_topic", default_value="/camera/rgb/image_raw",
                              description="RGB image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("thermal_topic", default_value="/camera/thermal/image_raw",
                              description="Thermal image topic (sensor_msgs/Image, mono8/mono16)"),
        DeclareLaunchArgument("namespace", default_value="perception", description="Namespace of the node"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "vehicle.yaml"),
                              description="YAML file with the node's parameters"),
    ]
    node = Node(
        package="rgbt_perception",
        executable="rgbt_node",
        name="rgbt_perception",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"weights": LaunchConfiguration("weights"), "device": LaunchConfiguration("device")},
        ],
        remappings=[
            ("rgb/image", LaunchConfiguration("rgb_topic")),
            ("rgb/image/compressed", [LaunchConfiguration("rgb_topic"), "/compressed"]),
            ("thermal/image", LaunchConfiguration("thermal_topic")),
        ],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
