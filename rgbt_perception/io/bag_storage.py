"""rosbag2 storage choices, importable without NumPy or rosbags (command lines offer them)."""

STORAGE_FORMATS = ("mcap", "sqlite3")
METADATA_VERSIONS = (8, 9)
