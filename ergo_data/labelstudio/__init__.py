"""Label Studio review: client, push, pull, and the real server in its own venv."""
