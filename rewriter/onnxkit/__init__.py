"""The ONNX toolkit the project stands on: graphs (``graph``), light models and onnxruntime
sessions (``weights``), type and shape inference and measurement (``shapes``), constant
folding within size limits (``folding``), the bodies of the project's own functions
(``functions``), and small model facts read one way (``facts``). The export, the importer,
verification and the passes all import it; it imports none of them."""
