#!/bin/bash
# The official TorchServe image's entry point, reproduced: `serve` starts TorchServe in the background from the
# image's config.properties with token authorization off; any other command runs instead. Either way the container
# then stays up on `tail`, as the original's does.
set -e
if [[ "$1" = "serve" ]]; then
    shift 1
    torchserve --start --ts-config /home/model-server/config.properties --disable-token-auth
else
    eval "$@"
fi
tail -f /dev/null
