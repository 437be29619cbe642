"""What every layer of face_transfer may import: registries, file I/O, digests, errors, peer records and run paths.
Nothing here imports TensorFlow, Keras or any other part of the package (a test enforces it).
"""
