"""The front end of the Python REST servers: uvicorn configured through its public settings, serving a WSGI app on
a thread pool (http), the drain on shutdown (draining), and worker processes sharing one port (workers)."""
