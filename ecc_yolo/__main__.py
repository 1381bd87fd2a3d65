"""`python -m ecc_yolo ...` is the `ecc-yolo` command."""

from ecc_yolo.cli import main

if __name__ == "__main__":
    main()
