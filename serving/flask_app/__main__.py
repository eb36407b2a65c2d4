"""`python -m serving.flask_app`: the Flask app on uvicorn (serving.flask_app.server)."""

import sys

from serving.flask_app.server import main

if __name__ == "__main__":
    sys.exit(main())
