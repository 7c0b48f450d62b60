"""Training, ONNX export and import of recurrent models (needs the ``train`` extra).

torch and onnx are imported only inside this package; the serving path never imports it.
"""
