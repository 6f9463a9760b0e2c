"""Training stages (``m3 train STAGE``): each module exposes its config dataclass and a ``run_*`` function."""
