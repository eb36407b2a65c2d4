"""`python -m serving.playground`: serve the playground page on 127.0.0.1."""

from serving.playground.main import main

if __name__ == "__main__":
    raise SystemExit(main())
