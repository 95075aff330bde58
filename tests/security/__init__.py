"""Hostile input: what strangers can put in a repository, a URL or a request, and what Kiln does with it."""
