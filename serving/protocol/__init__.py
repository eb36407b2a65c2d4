"""TensorFlow Serving's wire protocol, shared by every server and client.

errors      the one request error: a sentence, its gRPC status code and the HTTP status TF Serving maps it to
rest        TF Serving's JSON bodies: parse a request against a signature's inputs, format the answer
tensors     TensorProto ⇄ NumPy for every dtype the gRPC API carries
signatures  tensor and signature specs, TF Serving's checks of inputs and output filters, SignatureDef JSON

NumPy and protobuf only (TensorFlow's generated *_pb2 message modules, never its API): no server, client or
framework. rest, errors and signatures need NumPy alone, so torch-model-archiver ships this package inside the
.mar and the TorchServe handler parses bodies with the same code as the other servers.
"""
