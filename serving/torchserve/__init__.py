"""TorchServe's side of the project: the model handler and the server configuration."""
