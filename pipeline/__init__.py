"""matchmill.pipeline."""
