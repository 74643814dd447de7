"""Writes the Keras recurrent models of ``tests/test_keras_loops.py``, converted by tf2onnx.

Run once, outside the test suite (TensorFlow is not a test dependency):

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu tf2onnx
    /tmp/tf/bin/python tests/data/tf2onnx/generate.py

Each model reads ``x`` of shape ``[batch, 7, 3]`` (a fixed sequence length, as tf2onnx writes
it) and returns two numbers per row. tf2onnx converts Keras's LSTM to ONNX's LSTM op and
GRU and SimpleRNN to a ``Loop`` whose maximum trip count is the sequence length and whose
condition is computed in the body from the iteration counters.
"""

from pathlib import Path

import tensorflow as tf
import tf2onnx

HERE = Path(__file__).resolve().parent
LAYERS = {
    "lstm": lambda: [tf.keras.layers.LSTM(5)],
    "gru": lambda: [tf.keras.layers.GRU(5)],
    "simple_rnn": lambda: [tf.keras.layers.SimpleRNN(6)],
    "lstm_gru_dense": lambda: [tf.keras.layers.LSTM(5, return_sequences=True), tf.keras.layers.GRU(4)],
}

if __name__ == "__main__":
    for name, layers in LAYERS.items():
        tf.random.set_seed(0)
        inputs = tf.keras.Input((7, 3))
        hidden = inputs
        for layer in layers():
            hidden = layer(hidden)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(hidden))
        signature = (tf.TensorSpec((None, 7, 3), tf.float32, name="x"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
        (HERE / f"keras_{name}.onnx").write_bytes(proto.SerializeToString())
        print(f"wrote keras_{name}.onnx ({len(proto.SerializeToString()):,} bytes)")
