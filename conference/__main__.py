"""`python -m conference`: the same as the `conference` command."""

from conference.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
