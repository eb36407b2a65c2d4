"""TensorFlow Serving's wire protocol, shared by every server and client.

errors         the one request error: a sentence, its gRPC status code and the HTTP status TF Serving maps it to
rest           the REST body as the Flask app and the TorchServe handler take it: checked against a fixed signature
json_values    JSON to tensors as the real server reads them, typed by a signature's input dtypes
json_writing   tensors to JSON as the real server writes them (floats: six significant digits, else nine or 17)
json_predict   :predict bodies in row and columnar format, and their answers, as the real server parses and writes them
json_examples  :classify and :regress bodies (tf.Example features as JSON), and their answers
limits         bounds on one request (JSON depth, elements decoded) checked before any allocation
tensors        TensorProto ⇄ NumPy for every dtype the gRPC API carries, by TensorFlow's own rules
signatures     tensor and signature specs, TF Serving's checks of inputs and output filters, SignatureDef JSON

NumPy, orjson (the C JSON parser bodies are decoded with) and protobuf only (TensorFlow's generated *_pb2 message
modules, never its API): no server, client or framework. rest, the json modules, errors and signatures need NumPy
and orjson alone, so torch-model-archiver ships this
package inside the .mar and the TorchServe handler parses bodies with the same code as the other servers.
"""
