"""Location of the helper scripts that tests start as separate processes."""
import os

HELPERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ros_helpers")
