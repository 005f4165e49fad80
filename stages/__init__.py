"""matchmill.stages."""
