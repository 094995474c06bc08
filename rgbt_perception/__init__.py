"""rgbt_perception: fused RGB + thermal semantic segmentation and detection."""

__version__ = "0.1.0"
