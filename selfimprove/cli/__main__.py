"""`python -m selfimprove.cli`: the same command as `selfimprove`."""

from selfimprove.cli import main

if __name__ == "__main__":
    main()
