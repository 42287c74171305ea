"""After training: export (merge, verify, write), and what a finished run records so an export can check itself."""
