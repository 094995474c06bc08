"""Offline training of rgbt_perception models: data sets, synthetic scenes, losses, training loop."""
