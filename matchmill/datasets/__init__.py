"""matchmill.datasets."""
