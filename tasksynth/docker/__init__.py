"""Docker: the engine, base images, and our labels."""
