"""`python -m serving.tfserving`: start the server with tensorflow_model_server's flags."""

from serving.tfserving.main import main

if __name__ == "__main__":
    raise SystemExit(main())
