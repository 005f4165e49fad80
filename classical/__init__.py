"""matchmill.classical."""
