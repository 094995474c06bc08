# rgbt_perception developer entry points. `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
BUILD_STAMP := install/.build-stamp
# Keep DDS discovery on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
ENV := source $(VENV)/bin/activate && source install/setup.bash &&
PYTEST_ARGS ?=

.PHONY: setup demo test test-long bench clean

setup: $(BUILD_STAMP)

$(DEPS_STAMP): .ci/requirements.txt .ci/requirements-sam2.txt .ci/setup_env.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip==26.3
	$(VPY) -m pip install --quiet -r .ci/requirements.txt
	SAM2_BUILD_CUDA=0 $(VPY) -m pip install --quiet --no-build-isolation -r .ci/requirements-sam2.txt
	$(VPY) .ci/setup_env.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) setup.py setup.cfg package.xml rgbt_msgs/package.xml rgbt_msgs/CMakeLists.txt $(wildcard rgbt_msgs/msg/*.msg)
	source $(VENV)/bin/activate && \
	  export AMENT_PREFIX_PATH=$$VIRTUAL_ENV CMAKE_PREFIX_PATH=$$VIRTUAL_ENV && \
	  colcon --log-base build/log build --base-paths . rgbt_msgs --symlink-install \
	    --event-handlers console_direct- \
	    --cmake-args -DPython3_EXECUTABLE=$$VIRTUAL_ENV/bin/python -DBUILD_TESTING=OFF
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(ENV) bash docs/demo.sh

test: setup
	$(ENV) python -m pytest test -m "not long" $(PYTEST_ARGS)

# The measurement-sized tests (marker `long`) that keep `make test` under 15 minutes on 2 cores.
test-long: setup
	$(ENV) python -m pytest test -m long $(PYTEST_ARGS)

bench: setup
	$(ENV) rgbt-bench --out docs/benchmarks.md

# GPU tests + GPU benchmark (micro, tiny, base_plus; fp16/bf16; every available backend and engine path:
# eager, CUDA graphs, compiled; start to first output; mask agreement on the synthetic val split, made
# here if missing; the node over DDS for 60 s; about 8 minutes on an H100), then the frozen-trunk check
# (tiny from SAM2-layout checkpoints, trunk frozen + LoRA; about 7 minutes on an H200); each prints its
# results folder. Without a CUDA GPU both say so and exit non-zero.
GPU_CHECK_DATA ?= runs/data/synthetic
.PHONY: gpu-check
gpu-check: setup
	test -f $(GPU_CHECK_DATA)/val.txt || ($(ENV) rgbt-synth --out $(GPU_CHECK_DATA) --num-train 0 --num-val 64 \
	  --num-test 0 --size 240x320 --thermal-size 120x160 --no-progress)
	$(ENV) python -m rgbt_perception.bench.gpu_check --agreement-data $(GPU_CHECK_DATA); status=$$?; \
	$(ENV) python -m training.sam2_lora_check --out out/gpu-check/sam2-lora-$$(date -u +%Y%m%dT%H%M%SZ) \
	  && exit $$status

clean:
	rm -rf build install log
