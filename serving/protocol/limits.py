"""What one request may cost a server, whatever its framing: bounds checked before anything is allocated.

Every server applies these to every body and message it decodes, so a small request can never make a server build
a large array (a 55-byte gRPC Predict declaring 2^26 elements) or recurse without bound (JSON nested 10,000 deep).
"""

from __future__ import annotations

# Deepest JSON nesting a body may use. A tensor of rank r written as nested lists needs r + 3 levels (the body,
# "instances" or "inputs", a named input); TensorFlow has no tensor of rank above 254, and real bodies stay far
# below this bound, which only keeps a hostile body from exhausting a parser's stack.
MAX_JSON_DEPTH = 64

# Elements one request may decode into, over all its tensors: 2^26 float32 values are 256 MiB, four times what the
# largest body the servers accept (64 MiB) could carry at one byte per value. More is refused as INVALID_ARGUMENT
# (HTTP 400) before any array is allocated.
MAX_REQUEST_ELEMENTS = 1 << 26
