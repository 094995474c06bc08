"""One engine in its own process, driven line by line by :mod:`rgbt_perception.bench.ladder`.

The driver runs this file's source with ``python -c`` and a JSON config, with ``PYTHONPATH`` naming
the source tree to measure (this checkout, or an older commit unpacked elsewhere), so this file
imports nothing of this checkout itself and uses only the engine API every version has:
``ModelConfig``/``RGBTNet``, ``save_weights``/``WeightsMetadata.for_model``, ``get_class_set`` and
``create_engine(path, device=..., precision=...)`` (``InferenceEngine`` in versions before it; ``backend=``
only when one is asked for).

Config keys: ``weights`` (file to load, written first when ``build`` is true), ``variant``,
``input_size``, ``seed``, ``frame_size``, ``backend``, ``merge`` (``default``: the engine's own
choice | ``off`` | ``per_camera`` | ``batched``), ``precision``, ``threads``, ``random_adapters``.

Commands on stdin, one JSON line answered on stdout per command: ``run`` (one ``infer`` of the
fixed frame: wall and CPU ms, the engine's stage timings), ``mask PATH`` (save the mask as .npy),
``memory`` (VmRSS/VmHWM MiB and whether torch is loaded), ``quit``.
"""
import json
import os
import sys
import time


def synthetic_pair(frame_size, seed):
    """A deterministic road-like pair: RGB ``HxWx3`` uint8 and raw 16-bit thermal ``HxW`` (smooth gradients
    plus noise, so percentiles, resizing and the network see ordinary values)."""
    import numpy as np

    height, width = (int(v) for v in frame_size)
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = 0.6 * rows + 0.4 * cols
    rgb = np.stack([base, 1.0 - base, 0.5 * (rows + 0 * cols)], axis=-1) * 200.0
    rgb = np.clip(rgb + rng.normal(0.0, 12.0, rgb.shape), 0, 255).astype(np.uint8)
    thermal = 7500.0 + 1500.0 * rows * (1.0 - cols) + rng.normal(0.0, 40.0, (height, width))
    return rgb, np.clip(thermal, 0, 65535).astype(np.uint16)


def build_weights(config):
    import torch

    from rgbt_perception.core.classes import get_class_set
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model import ModelConfig, RGBTNet

    class_set = get_class_set("synthetic")
    cfg = ModelConfig(variant=config["variant"], num_classes=len(class_set.names),
                      input_size=tuple(config["input_size"]))
    torch.manual_seed(config["seed"])
    model = RGBTNet(cfg).eval()
    if config.get("random_adapters"):
        with torch.no_grad():  # non-zero LoRA, so merged and unmerged really compute different things
            for name, param in model.named_parameters():
                if ".lora_B." in name:
                    param.normal_(0.0, 0.05)
    save_weights(config["weights"], model, WeightsMetadata.for_model(cfg, class_set))


def memory():
    status = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS", "VmHWM")):
                status[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss_mb": status.get("VmRSS"), "peak_mb": status.get("VmHWM"), "torch_loaded": "torch" in sys.modules}


def main():
    config = json.loads(sys.argv[1])
    started = time.perf_counter()
    if config.get("merge") == "off":
        os.environ["RGBT_MERGE_LORA"] = "0"
    if config.get("build"):
        build_weights(config)
    if config.get("backend", "torch") == "torch":
        import torch

        torch.set_num_threads(int(config["threads"]))
    kwargs = {"device": "cpu", "precision": config.get("precision", "fp32")}
    if config.get("backend", "torch") != "torch":
        kwargs["backend"] = config["backend"]
    try:
        from rgbt_perception.backends.factory import create_engine as make_engine
    except ImportError:  # versions before the engine factory: InferenceEngine chose the backend itself
        from rgbt_perception.inference import InferenceEngine as make_engine
    engine = make_engine(config["weights"], **kwargs)
    if config.get("merge") in ("per_camera", "batched"):
        from rgbt_perception.io.weights import load_weights
        from rgbt_perception.model.lora_merge import inference_model

        batched = config["merge"] == "batched"
        engine.model = inference_model(load_weights(config["weights"])[0], batch_modalities=batched)[0]
    rgb, thermal = synthetic_pair(config["frame_size"], config.get("frame_seed", 0))
    print(json.dumps({"ready": True, "setup_s": time.perf_counter() - started,
                      "engine": type(engine).__name__, **memory()}), flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "run":
            wall, cpu = time.perf_counter(), time.process_time()
            result = engine.infer(rgb, thermal)
            answer = {"wall_ms": (time.perf_counter() - wall) * 1e3, "cpu_ms": (time.process_time() - cpu) * 1e3,
                      "stages": result.timings_ms, "detections": len(result.detections)}
        elif command == "mask":
            import numpy as np

            np.save(argument, engine.infer(rgb, thermal).mask)
            answer = {"saved": argument}
        elif command == "memory":
            answer = memory()
        elif command == "quit":
            break
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
