"""matchmill.geometry."""
