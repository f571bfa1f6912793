"""Built-in skills: each runs real tools on the repository inside the task's sandbox."""
