"""TensorFlow Serving's wire protocol, shared by every server and client: errors, REST bodies, tensors, signatures.

NumPy and protobuf only: no server, client or framework. The modules import each other relatively, so the
package also works when shipped alone (as `protocol/` inside a TorchServe archive).
"""
