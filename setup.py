"""rgbt_perception: RGB-thermal semantic segmentation and detection for ROS 2."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "rgbt_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["rgbt_perception", "rgbt_perception.*", "training", "training.*"]),
    package_data={PACKAGE: ["data/*.safetensors", "data/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="rgbt_perception maintainers",
    maintainer_email="maintainers@rgbt-perception.dev",
    description="Fused RGB + thermal semantic segmentation and detection (LoRA-adapted SAM2 Hiera) for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "rgbt_node = rgbt_perception.cli.node:main",
            "rgbt-infer = rgbt_perception.cli.infer:main",
            "rgbt-make-bag = training.cli.make_bag:main",
            "rgbt-eval-bag = rgbt_perception.cli.eval_bag:main",
            "rgbt-bench = rgbt_perception.cli.bench:main",
            "rgbt-calibrate = rgbt_perception.cli.calibrate:main",
            "rgbt-synth = training.cli.synth:main",
            "rgbt-train = training.cli.train:main",
            "rgbt-eval = training.cli.evaluate:main",
            "rgbt-export = training.cli.export:main",
            "rgbt-text-embed = training.cli.text_embed:main",
            "rgbt-pretrain = training.cli.pretrain:main",
        ],
    },
)
