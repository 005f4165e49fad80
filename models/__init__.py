"""matchmill.models."""
