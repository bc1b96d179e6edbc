"""Release: a finished run as a publishable, checksummed bundle (`export`), and its check (`verify`)."""
