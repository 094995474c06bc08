"""Console scripts of rgbt_perception."""
