"""aiosqlite storage: the only place in the project with SQL."""
