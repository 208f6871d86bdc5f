"""Code-agent environments: sources of candidates, filters, images, install recipes, test runners, validation."""
