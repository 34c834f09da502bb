"""``python -m training``: the training CLI."""

from training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
