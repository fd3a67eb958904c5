"""The command lines: train.py (train.py, resume.py, loggers.py) and the one-line error handling (errors.py)."""
