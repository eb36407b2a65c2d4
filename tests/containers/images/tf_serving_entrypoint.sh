#!/bin/bash
# The official tensorflow/serving image's entry point, reproduced: the server for $MODEL_BASE_PATH/$MODEL_NAME on
# $GRPC_PORT and $PORT, any further arguments passed on. Like the original it does not exec, so bash stays PID 1
# (docker-compose.yml therefore runs the same command line itself; see the tf-serving service there).
tensorflow_model_server --port=${GRPC_PORT} --rest_api_port=${PORT} \
    --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"
