# A stand-in for the official tensorflow/serving image, for make test-containers only (never what a user runs).
# It keeps the official image's contract: tensorflow_model_server on the PATH with the real server's flags, the
# same entry point script (MODEL_NAME, MODEL_BASE_PATH, GRPC_PORT and PORT variables), ports 8500 and 8501, and bash
# for the compose healthcheck. Behind it runs this project's compatible server, `python -m serving.tfserving`, since
# the real image cannot be pulled where this test runs. Unlike the real image it has Python (the base's python3):
# tests/serving/test_compose.py checks that nothing in the tf-serving service relies on it.
#
# Build context: the repository root (.dockerignore admits experiment/, serving/ and this folder).
ARG BASE_IMAGE
FROM scratch AS files
COPY experiment/ /opt/tfserving/experiment/
COPY serving/ /opt/tfserving/serving/
COPY tests/containers/images/tensorflow_model_server /usr/bin/tensorflow_model_server
COPY tests/containers/images/tf_serving_entrypoint.sh /usr/bin/tf_serving_entrypoint.sh

FROM ${BASE_IMAGE}
ARG PIP_INSTALL_OPTIONS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY tests/containers/images/requirements-tfserving.txt /tmp/requirements.txt
RUN python3 -m venv /opt/tfserving/venv \
    && /opt/tfserving/venv/bin/pip install $PIP_INSTALL_OPTIONS -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && mkdir -p /models
# One layer for all the small files: on vfs every layer above the large one is a full copy of it.
COPY --from=files / /

ENV GRPC_PORT=8500 \
    PORT=8501 \
    MODEL_BASE_PATH=/models \
    MODEL_NAME=model
EXPOSE 8500 8501
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
