"""MLflow: the Tracker (tracker.py: a run per trial, through the writer's queue, writer.py), the
sweep's parent run and its saved view (sweep_run.py, view.py), the names of what is logged
(names.py) and the embedded SQLite store (sqlite_store.py). No Ray."""
