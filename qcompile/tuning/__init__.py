"""Auto-tuning with MetaSchedule: the database (`database.py`), the driver (`tuner.py`) and
its progress display (`progress.py`)."""
