"""Scripts that training tests start as separate processes (torchrun workers)."""
