"""The PyTorch side: build, train, log with torch.utils.tensorboard and export TorchScript plus a TorchServe archive."""
