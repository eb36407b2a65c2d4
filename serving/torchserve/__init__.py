"""TorchServe's side of the project: the model handler, the server configuration, the live roll-out of new versions."""
