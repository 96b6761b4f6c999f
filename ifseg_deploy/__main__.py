"""``python -m ifseg_deploy ...`` (and ``torchrun -m ifseg_deploy ...``) runs the command-line interface."""

from .cli import main

if __name__ == "__main__":
    main()
