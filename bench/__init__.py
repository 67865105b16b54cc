"""Scripts that print figures (run as `.venv/bin/python bench/<name>.py`)."""
