"""Project scripts (`make demo`)."""
