# A stand-in for the official pytorch/torchserve:0.12.0-cpu image, for make test-containers only (never what a
# user runs). It follows the layout of TorchServe's published docker/Dockerfile: Java 17, a virtual environment
# in /home/venv first on the PATH and owned by model-server (so `torchserve` and `python` are the image's, and an
# image built on it installs with pip as that user), the user model-server, its home
# /home/model-server with config.properties, tmp/ (TEMP) and model-store/, ports 8080-8082 and 7070-7071, and
# dockerd-entrypoint.sh with CMD ["serve"]. TorchServe itself is the real one, from PyPI.
#
# Build context: the repository root (.dockerignore admits this folder).
ARG BASE_IMAGE
FROM scratch AS files
COPY tests/containers/images/dockerd-entrypoint.sh /usr/local/bin/dockerd-entrypoint.sh
COPY tests/containers/images/config.properties /home/model-server/config.properties

FROM ${BASE_IMAGE}
ARG PIP_INSTALL_OPTIONS
ENV PYTHONUNBUFFERED=TRUE \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY tests/containers/images/requirements-torchserve.txt /tmp/requirements.txt
# Java from the base's own Debian mirror (the build runs with the host's network). torch's C++ headers only serve
# compiling extensions.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /home/venv \
    && /home/venv/bin/pip install $PIP_INSTALL_OPTIONS -r /tmp/requirements.txt \
    && rm -rf /tmp/requirements.txt /home/venv/lib/python3*/site-packages/torch/include \
    && useradd -m model-server \
    && mkdir -p /home/model-server/tmp /home/model-server/model-store \
    && chown -R model-server /home/model-server /home/venv
COPY --from=files / /

ENV PATH="/home/venv/bin:$PATH" \
    TEMP=/home/model-server/tmp
EXPOSE 8080 8081 8082 7070 7071
USER model-server
WORKDIR /home/model-server
ENTRYPOINT ["/usr/local/bin/dockerd-entrypoint.sh"]
CMD ["serve"]
