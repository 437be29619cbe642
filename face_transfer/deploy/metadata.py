"""Self-describing .tflite files: the standard TFLite model metadata, written and read without TensorFlow.

Owns write_metadata, attach_metadata_buffer, carry_metadata, read_metadata, output_labels and model_io.

What is written is the format LiteRT / MediaPipe Tasks / Android Studio read (schema `metadata_schema.fbs`,
file identifier "M001"): a `ModelMetadata` flatbuffer stored in one of the model's buffers and named
"TFLITE_METADATA" in `Model.metadata`, plus its associated files packed as an uncompressed zip archive
appended to the model (the flatbuffer ignores trailing bytes; `unzip -l model.tflite` lists them). Per file:

- the input: `ImageProperties` (colour space RGB, default size), `NormalizationOptions` (mean, std: what
  turns the file's input values into the values it was trained on; our files take raw 0..255 pixels,
  the [-1, 1] scaling is inside the graph, so mean 0 and std 1) and `Stats` (min 0, max 255);
- every output, in the order of the subgraph's outputs, named as the signature names it, with a
  description (kind, units) and, for a classification head, its class names as an associated
  TENSOR_AXIS_LABELS file (one name per line, index i = probability i);
- the model: name, description (headline figures, config hash), version, author;
- `face_transfer.json` (model-level associated file, type DESCRIPTIONS): the same facts as JSON (kinds,
  classes, units, input spec, run figures) for readers that do not parse the metadata flatbuffer.

Why not a library: the maintained writer (mediapipe's `metadata_writers`) cannot be installed next to
TensorFlow 2.21 (mediapipe 1.2.2 needs absl-py~=2.3, tensorflow-model-optimization pins absl-py~=1.2;
mediapipe-numpy2 0.10.21 needs protobuf<5, TensorFlow 2.21 needs >=6.31), and tflite-support 0.4.4
(archived) needs protobuf<4. BUILD.md has the evidence. Reading needs only the `flatbuffers` package
(pure Python, a dependency of ai-edge-litert and TensorFlow), so a device with just an interpreter reads it too.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types as N
from flatbuffers.table import Table

from face_transfer.core.errors import CorruptArtifactError

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
# Every field written here exists since metadata schema 1.0.0 (AssociatedFile.version, 1.4.1, and
# CustomMetadata, 1.5.0, are not used), so any metadata parser can read all of it.
MIN_PARSER_VERSION = "1.0.0"
JSON_FILE = "face_transfer.json"
JSON_FORMAT = "face-transfer-metadata/1"

# metadata_schema.fbs enums
_ASSOCIATED = {"UNKNOWN": 0, "DESCRIPTIONS": 1, "TENSOR_AXIS_LABELS": 2, "TENSOR_VALUE_LABELS": 3,
               "TENSOR_AXIS_SCORE_CALIBRATION": 4, "VOCABULARY": 5, "SCANN_INDEX_FILE": 6}
_ASSOCIATED_NAMES = {v: k for k, v in _ASSOCIATED.items()}
_COLOR = {"UNKNOWN": 0, "RGB": 1, "GRAYSCALE": 2}
_COLOR_NAMES = {v: k for k, v in _COLOR.items()}
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2  # union ContentProperties
_PROCESS_NORMALIZATION = 1  # union ProcessUnitOptions
# TFLite schema TensorType -> numpy dtype name (the ones a face model can have at its edges)
_TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


def _corrupt(message: str):
    return CorruptArtifactError(message)


# --------------------------------------------------------------------------------------------- reading
class _T:
    """A flatbuffer table with field access by slot number (field i of the schema is slot i)."""

    def __init__(self, buf, pos):
        self.t = Table(buf, pos)

    def _o(self, slot):
        return self.t.Offset(4 + 2 * slot)

    def has(self, slot) -> bool:
        return self._o(slot) != 0

    def scalar(self, slot, flags, default=0):
        o = self._o(slot)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def string(self, slot):
        o = self._o(slot)
        return self.t.String(o + self.t.Pos).decode("utf-8") if o else None

    def table(self, slot):
        o = self._o(slot)
        return _T(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot) -> list:
        o = self._o(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [_T(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def strings(self, slot) -> list[str]:
        o = self._o(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [self.t.String(start + 4 * i).decode("utf-8") for i in range(n)]

    def numbers(self, slot, flags) -> np.ndarray:
        o = self._o(slot)
        if not o:
            return np.zeros(0)
        return np.array(self.t.GetVectorAsNumpy(flags, o), copy=True)

    def union(self, type_slot, value_slot):
        kind = self.scalar(type_slot, N.Uint8Flags)
        o = self._o(value_slot)
        if not kind or not o:
            return kind, None
        return kind, _T(self.t.Bytes, self.t.Indirect(o + self.t.Pos))


def _root(buf: bytes, identifier: bytes, what: str, label: str) -> _T:
    if len(buf) < 8 or bytes(buf[4:8]) != identifier:
        raise _corrupt(f"{label}: not a {what} (file identifier {bytes(buf[4:8])!r}, expected {identifier!r})")
    return _T(buf, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))


def _label(path_or_bytes) -> str:
    return "<tflite bytes>" if isinstance(path_or_bytes, (bytes, bytearray, memoryview)) else os.fspath(path_or_bytes)


def _read_bytes(path_or_bytes) -> tuple[bytes, str]:
    label = _label(path_or_bytes)
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), label
    if not os.path.isfile(label):
        raise FileNotFoundError(f"{label}: no such .tflite file")
    with open(label, "rb") as f:
        return f.read(), label


def _model_io(buf: bytes, label: str) -> dict:
    """Inputs/outputs of subgraph 0 (tensor name, dtype, shape), their signature names, and the model's
    metadata entries {name: buffer bytes}, read from the TFLite flatbuffer (schema.fbs)."""
    try:
        model = _root(buf, TFLITE_IDENTIFIER, ".tflite model", label)
        subgraphs = model.tables(2)
        if not subgraphs:
            raise _corrupt(f"{label}: the .tflite model has no subgraph")
        signatures = model.tables(7)
        sub_index = signatures[0].scalar(4, N.Uint32Flags) if signatures else 0
        sub = subgraphs[sub_index]
        tensors = sub.tables(0)

        def tensor(i):
            t = tensors[int(i)]
            shape = t.numbers(7, N.Int32Flags) if t.has(7) else t.numbers(0, N.Int32Flags)
            return {"index": int(i), "tensor_name": t.string(3) or "", "dtype": _TENSOR_TYPES.get(
                t.scalar(1, N.Int8Flags), f"type{t.scalar(1, N.Int8Flags)}"), "shape": [int(d) for d in shape]}

        ins = [tensor(i) for i in sub.numbers(1, N.Int32Flags)]
        outs = [tensor(i) for i in sub.numbers(2, N.Int32Flags)]
        sig_names = {}
        if signatures:
            for slot, io_list in ((0, ins), (1, outs)):
                # One tensor can be two signature outputs (the student's `features` is its code in the
                # "embedding" view): it is then listed twice in the subgraph's outputs, and takes its
                # signature names one after the other.
                names = {}
                for m in signatures[0].tables(slot):
                    names.setdefault(m.scalar(1, N.Uint32Flags), []).append(m.string(0))
                for entry in io_list:
                    if names.get(entry["index"]):
                        entry["name"] = names[entry["index"]].pop(0)
                        sig_names.setdefault(slot, []).append(entry["name"])
        for entry in ins + outs:
            entry.setdefault("name", entry["tensor_name"])
        buffers = model.tables(4)
        entries = {}
        for m in model.tables(6):
            name, index = m.string(0), m.scalar(1, N.Uint32Flags)
            if index >= len(buffers):
                raise _corrupt(f"{label}: metadata entry {name!r} points at buffer {index}; the model has {len(buffers)}")
            b = buffers[index]
            offset, size = b.scalar(1, N.Uint64Flags), b.scalar(2, N.Uint64Flags)
            if offset > 1:  # buffers of >2 GB models live after the flatbuffer, addressed from the file start
                entries[name] = bytes(buf[offset: offset + size])
            else:
                entries[name] = b.numbers(0, N.Uint8Flags).tobytes()
    except (IndexError, TypeError, ValueError, UnicodeDecodeError, struct.error) as e:
        if type(e).__name__ == "CorruptArtifactError":
            raise
        raise _corrupt(f"{label}: not a readable .tflite flatbuffer ({type(e).__name__}: {e})") from None
    return {"inputs": ins, "outputs": outs, "signature": bool(signatures), "metadata_entries": entries}


def model_io(path_or_bytes) -> dict:
    """{"inputs": [...], "outputs": [...]} of a .tflite file, each {"name" (signature name), "tensor_name",
    "dtype", "shape"} in subgraph order; read from the flatbuffer, without an interpreter."""
    buf, label = _read_bytes(path_or_bytes)
    info = _model_io(buf, label)
    return {"inputs": info["inputs"], "outputs": info["outputs"]}


def _associated_files(buf: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        return {}


def _read_files(t: _T, slot: int) -> list[dict]:
    return [{"name": f.string(0), "description": f.string(1) or "",
             "type": _ASSOCIATED_NAMES.get(f.scalar(2, N.Int8Flags), "UNKNOWN"), "locale": f.string(3)}
            for f in t.tables(slot)]


def _read_tensor(t: _T) -> dict:
    out = {"name": t.string(0) or "", "description": t.string(1) or "", "dimension_names": t.strings(2),
           "associated_files": _read_files(t, 6)}
    content = t.table(3)
    if content is not None:
        kind, props = content.union(0, 1)
        if kind == _CONTENT_IMAGE and props is not None:
            out["color_space"] = _COLOR_NAMES.get(props.scalar(0, N.Int8Flags), "UNKNOWN")
            size = props.table(1)
            if size is not None:
                out["size"] = [int(size.scalar(0, N.Uint32Flags)), int(size.scalar(1, N.Uint32Flags))]
        out["content"] = {_CONTENT_FEATURE: "feature", _CONTENT_IMAGE: "image"}.get(kind, str(kind))
    for unit in t.tables(4):
        kind, opts = unit.union(0, 1)
        if kind == _PROCESS_NORMALIZATION and opts is not None:
            out["normalization"] = {"mean": opts.numbers(0, N.Float32Flags).tolist(),
                                    "std": opts.numbers(1, N.Float32Flags).tolist()}
    stats = t.table(5)
    if stats is not None:
        out["stats"] = {"max": stats.numbers(0, N.Float32Flags).tolist(), "min": stats.numbers(1, N.Float32Flags).tolist()}
    return out


def read_metadata(path_or_bytes, check: bool = True) -> dict | None:
    """The metadata of a .tflite file as a dict, or None when the file has none.

    {"name", "description", "version", "author", "license", "min_parser_version", "input" (the first input:
    name, color_space, size [w, h], normalization {mean, std}, stats), "inputs", "outputs" {output name:
    {"description", "kind", "classes", "units", "trained_on"?, ...}} in the subgraph's output order,
    "associated_files" [names], "json" (face_transfer.json, or None)}.

    With `check`, metadata that does not describe this model (another number of inputs or outputs, other
    output names, class lists whose length differs from the output's, a labels file missing from the
    archive) raises CorruptArtifactError naming the file and both sides.
    """
    buf, label = _read_bytes(path_or_bytes)
    info = _model_io(buf, label)
    raw = info["metadata_entries"].get(METADATA_NAME)
    if raw is None:
        return None
    try:
        root = _root(raw, METADATA_IDENTIFIER, "TFLite metadata flatbuffer", f"{label} ({METADATA_NAME})")
        subs = root.tables(3)
        sub = subs[0] if subs else None
        inputs = [_read_tensor(t) for t in sub.tables(2)] if sub else []
        outputs = [_read_tensor(t) for t in sub.tables(3)] if sub else []
        meta = {"name": root.string(0) or "", "description": root.string(1) or "", "version": root.string(2) or "",
                "author": root.string(4) or "", "license": root.string(5) or "",
                "min_parser_version": root.string(7) or "", "model_files": _read_files(root, 6)}
    except (IndexError, TypeError, ValueError, UnicodeDecodeError, struct.error) as e:
        if type(e).__name__ == "CorruptArtifactError":
            raise
        raise _corrupt(f"{label}: its {METADATA_NAME} buffer is not a readable metadata flatbuffer "
                       f"({type(e).__name__}: {e})") from None
    files = _associated_files(buf)
    js = None
    if JSON_FILE in files:
        try:
            js = json.loads(files[JSON_FILE].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _corrupt(f"{label}: associated file {JSON_FILE} is not valid JSON ({e})") from None
    js_outputs = (js or {}).get("outputs", {})
    out_map = {}
    for t in outputs:
        entry = dict(t)
        labels = [f for f in t["associated_files"] if f["type"] == "TENSOR_AXIS_LABELS"]
        if labels:
            name = labels[0]["name"]
            if name in files:
                entry["classes"] = [line for line in files[name].decode("utf-8").splitlines() if line.strip()]
            elif check:
                raise _corrupt(f"{label}: output {t['name']!r} names labels file {name!r}, which is not packed in "
                               f"the file (packed: {sorted(files)}); the file was truncated or re-written without it")
        extra = js_outputs.get(t["name"], {})
        entry["kind"] = extra.get("kind") or ("classification" if labels else None)
        if extra.get("units"):
            entry["units"] = extra["units"]
        if extra.get("trained_on"):
            entry["trained_on"] = extra["trained_on"]
        out_map[t["name"]] = entry
    meta.update({"input": inputs[0] if inputs else None, "inputs": inputs, "outputs": out_map,
                 "associated_files": sorted(files), "json": js})
    if check:
        _check_against_model(meta, info, label)
    return meta


def _check_against_model(meta: dict, info: dict, label: str) -> None:
    model_out = [o["name"] for o in info["outputs"]]
    meta_out = list(meta["outputs"])
    hint = "the metadata belongs to another model; re-export the file"
    if len(meta["inputs"]) != len(info["inputs"]):
        raise _corrupt(f"{label}: its TFLite metadata describes {len(meta['inputs'])} input(s), the model has "
                       f"{len(info['inputs'])}; {hint}")
    if len(meta_out) != len(model_out):
        raise _corrupt(f"{label}: its TFLite metadata describes {len(meta_out)} output(s) {meta_out}, the model has "
                       f"{len(model_out)} {model_out}; {hint}")
    if info["signature"] and meta_out != model_out:
        raise _corrupt(f"{label}: its TFLite metadata names the outputs {meta_out}, the model's signature names "
                       f"them {model_out}; {hint}")
    for o in info["outputs"]:
        classes = meta["outputs"][o["name"]].get("classes")
        if classes is not None and o["shape"] and o["shape"][-1] > 0 and len(classes) != o["shape"][-1]:
            raise _corrupt(f"{label}: its TFLite metadata gives output {o['name']!r} {len(classes)} class names, "
                           f"the output has {o['shape'][-1]} values; {hint}")
    size = (meta["input"] or {}).get("size")
    shape = info["inputs"][0]["shape"] if info["inputs"] else []
    if size and len(shape) == 4 and shape[1] > 0 and [shape[2], shape[1]] != size:
        raise _corrupt(f"{label}: its TFLite metadata gives the input size {size[0]}x{size[1]}, the model takes "
                       f"{shape[2]}x{shape[1]}; {hint}")


def output_labels(meta: dict | None) -> dict:
    """{output name: {"kind", "classes"?, "units"?, "trained_on"?}}: what infer_tflite decodes predictions with
    (the format of the `.labels.json` sidecar). Empty for None."""
    if not meta:
        return {}
    out = {}
    for name, o in meta["outputs"].items():
        entry = {"kind": o.get("kind") or "unknown"}
        if o.get("classes") is not None:
            entry["classes"] = list(o["classes"])
        if o.get("units"):
            entry["units"] = o["units"]
        if o.get("trained_on"):
            entry["trained_on"] = dict(o["trained_on"])
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------- writing
def _schema_module():
    """The TFLite model schema's generated Python (object API), from ai-edge-litert or else TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _files_vector(b, files):
    offs = []
    for f in files:
        name = b.CreateString(f["name"])
        desc = b.CreateString(f.get("description", "")) if f.get("description") else None
        locale = b.CreateString(f["locale"]) if f.get("locale") else None
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(0, name, 0)
        if desc is not None:
            b.PrependUOffsetTRelativeSlot(1, desc, 0)
        b.PrependInt8Slot(2, _ASSOCIATED[f["type"]], 0)
        if locale is not None:
            b.PrependUOffsetTRelativeSlot(3, locale, 0)
        offs.append(b.EndObject())
    return _offsets_vector(b, offs)


def _offsets_vector(b, offs):
    b.StartVector(4, len(offs), 4)
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _floats(b, values):
    return b.CreateNumpyVector(np.asarray(values, np.float32))


def _tensor_metadata(b, spec: dict):
    name = b.CreateString(spec["name"])
    desc = b.CreateString(spec.get("description", ""))
    dims = _offsets_vector(b, [b.CreateString(d) for d in spec["dimension_names"]]) \
        if spec.get("dimension_names") else None
    # content
    if spec.get("image"):
        width, height = spec["image"]["size"]
        b.StartObject(2)
        b.PrependUint32Slot(0, int(width), 0)
        b.PrependUint32Slot(1, int(height), 0)
        size = b.EndObject()
        b.StartObject(2)
        b.PrependInt8Slot(0, _COLOR[spec["image"]["color_space"]], 0)
        b.PrependUOffsetTRelativeSlot(1, size, 0)
        props, kind = b.EndObject(), _CONTENT_IMAGE
    else:
        b.StartObject(0)
        props, kind = b.EndObject(), _CONTENT_FEATURE
    b.StartObject(3)
    b.PrependUint8Slot(0, kind, 0)
    b.PrependUOffsetTRelativeSlot(1, props, 0)
    content = b.EndObject()
    units = None
    if spec.get("normalization"):
        mean, std = _floats(b, spec["normalization"]["mean"]), _floats(b, spec["normalization"]["std"])
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, mean, 0)
        b.PrependUOffsetTRelativeSlot(1, std, 0)
        opts = b.EndObject()
        b.StartObject(2)
        b.PrependUint8Slot(0, _PROCESS_NORMALIZATION, 0)
        b.PrependUOffsetTRelativeSlot(1, opts, 0)
        units = _offsets_vector(b, [b.EndObject()])
    stats = None
    if spec.get("stats"):
        hi, lo = _floats(b, spec["stats"]["max"]), _floats(b, spec["stats"]["min"])
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, hi, 0)
        b.PrependUOffsetTRelativeSlot(1, lo, 0)
        stats = b.EndObject()
    files = _files_vector(b, spec["files"]) if spec.get("files") else None
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    for slot, value in ((2, dims), (3, content), (4, units), (5, stats), (6, files)):
        if value is not None:
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
    return b.EndObject()


def _metadata_buffer(model: dict, inputs: list, outputs: list, model_files: list) -> bytes:
    b = flatbuffers.Builder(1024)
    ins = _offsets_vector(b, [_tensor_metadata(b, s) for s in inputs])
    outs = _offsets_vector(b, [_tensor_metadata(b, s) for s in outputs])
    sub_name = b.CreateString(model["name"])
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, sub_name, 0)
    b.PrependUOffsetTRelativeSlot(2, ins, 0)
    b.PrependUOffsetTRelativeSlot(3, outs, 0)
    sub = _offsets_vector(b, [b.EndObject()])
    strings = {k: b.CreateString(model[k]) for k in ("name", "description", "version", "author", "license") if model.get(k)}
    files = _files_vector(b, model_files) if model_files else None
    parser = b.CreateString(MIN_PARSER_VERSION)
    b.StartObject(8)
    for slot, key in ((0, "name"), (1, "description"), (2, "version"), (4, "author"), (5, "license")):
        if key in strings:
            b.PrependUOffsetTRelativeSlot(slot, strings[key], 0)
    b.PrependUOffsetTRelativeSlot(3, sub, 0)
    if files is not None:
        b.PrependUOffsetTRelativeSlot(6, files, 0)
    b.PrependUOffsetTRelativeSlot(7, parser, 0)
    b.Finish(b.EndObject(), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def attach_metadata_buffer(tflite_bytes, metadata_buffer: bytes, associated_files: dict[str, bytes]) -> bytes:
    """The model with `metadata_buffer` as its TFLITE_METADATA entry (replacing any) and exactly
    `associated_files` packed after it (any previously packed files are dropped). No consistency check:
    write_metadata checks before calling it, read_metadata checks what it reads."""
    schema = _schema_module()
    buf = bytes(tflite_bytes)
    _root(buf, TFLITE_IDENTIFIER, ".tflite model", "<tflite bytes>")
    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    entry = schema.BufferT()
    entry.data = np.frombuffer(metadata_buffer, np.uint8).copy()
    model.buffers = list(model.buffers or [])
    model.metadata = list(model.metadata or [])
    for m in model.metadata:
        name = m.name.decode("utf-8") if isinstance(m.name, bytes) else m.name
        if name == METADATA_NAME:
            model.buffers[m.buffer] = entry
            break
    else:
        model.buffers.append(entry)
        m = schema.MetadataT()
        m.name = METADATA_NAME
        m.buffer = len(model.buffers) - 1
        model.metadata.append(m)
    b = flatbuffers.Builder(len(buf) + len(metadata_buffer) + 1024)
    b.Finish(model.Pack(b), file_identifier=TFLITE_IDENTIFIER)
    out = io.BytesIO()
    out.write(bytes(b.Output()))
    if associated_files:
        # Stored, not deflated: runtimes memory-map the files out of the model (as the reference populator does).
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
            for name, data in associated_files.items():
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _labels_file_name(output: str) -> str:
    return f"{output}_labels.txt"


def write_metadata(tflite_bytes, *, name: str, description: str, outputs: dict[str, dict], version: str = "",
                   author: str = "face-transfer", license: str = "", color_space: str = "RGB",
                   mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_range=(0.0, 255.0),
                   input_description: str | None = None, extra: dict | None = None) -> bytes:
    """`tflite_bytes` with TFLite metadata: the model-level facts, the image input (colour space, size,
    normalisation `(x - mean) / std` of the values the file is fed, value range) and one entry per output.

    `outputs`: {output name: {"kind", "classes"?, "units"?, "description"?, "trained_on"?}} with exactly the
    model's output names (signature names); a classification output's classes become its TENSOR_AXIS_LABELS
    file, and their number must equal the output's last dimension; `trained_on` (the data a head was fitted
    on, {"dataset", "images", "domain", "synthetic", ...}) goes into face_transfer.json and read_metadata
    returns it. `extra` goes into face_transfer.json (e.g. the run's figures and config hash). Raises
    ValueError naming what does not match the model.
    """
    buf = bytes(tflite_bytes)
    info = _model_io(buf, "<tflite bytes>")
    model_out = [o["name"] for o in info["outputs"]]
    if set(outputs) != set(model_out):
        raise ValueError(f"write_metadata: outputs {sorted(outputs)} do not match the model's outputs {sorted(model_out)} "
                         f"(missing {sorted(set(model_out) - set(outputs))}, unknown {sorted(set(outputs) - set(model_out))})")
    if len(info["inputs"]) != 1 or len(info["inputs"][0]["shape"]) != 4:
        raise ValueError(f"write_metadata: expected one image input [N,H,W,C], the model has "
                         f"{[i['shape'] for i in info['inputs']]}")
    if color_space not in _COLOR:
        raise ValueError(f"write_metadata: color_space={color_space!r}; expected one of {sorted(_COLOR)}")
    image = info["inputs"][0]
    _, height, width, channels = image["shape"]
    mean, std = [float(v) for v in np.atleast_1d(mean)], [float(v) for v in np.atleast_1d(std)]
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or min(abs(s) for s in std) == 0:
        raise ValueError(f"write_metadata: mean {mean} / std {std}: expected 1 or {channels} values, std non-zero")
    lo, hi = float(value_range[0]), float(value_range[1])
    in_desc = input_description or (
        f"{'RGB' if color_space == 'RGB' else color_space} face crop, {width}x{height}, {image['dtype']} values "
        f"{lo:g}..{hi:g}; normalised value = (x - mean) / std with mean {mean}, std {std}")
    in_spec = {"name": image["name"], "description": in_desc,
               "image": {"color_space": color_space, "size": (width, height)},
               "normalization": {"mean": mean, "std": std}, "stats": {"max": [hi], "min": [lo]}}
    files, out_specs, js_outputs = {}, [], {}
    for o in info["outputs"]:
        spec_in = dict(outputs[o["name"]])
        kind = spec_in.get("kind") or "unknown"
        classes = spec_in.get("classes")
        units = spec_in.get("units")
        desc = spec_in.get("description") or kind + (f", {units}" if units else "")
        spec = {"name": o["name"], "description": desc}
        if classes is not None:
            classes = [str(c) for c in classes]
            n = o["shape"][-1] if o["shape"] else -1
            if n > 0 and len(classes) != n:
                raise ValueError(f"write_metadata: output {o['name']!r} has {n} values, {len(classes)} class names given")
            if any("\n" in c or not c.strip() for c in classes):
                raise ValueError(f"write_metadata: output {o['name']!r}: class names must be non-empty single lines, got {classes}")
            fname = _labels_file_name(o["name"])
            files[fname] = ("\n".join(classes) + "\n").encode("utf-8")
            spec["files"] = [{"name": fname, "description": f"class names of {o['name']}, one per output index",
                              "type": "TENSOR_AXIS_LABELS"}]
            spec["stats"] = {"max": [1.0], "min": [0.0]}
        if kind == "landmarks" and len(o["shape"]) == 3:
            spec["dimension_names"] = ["batch", "point", "xy"]
        out_specs.append(spec)
        js_outputs[o["name"]] = {k: v for k, v in (("kind", kind), ("classes", classes), ("units", units),
                                                   ("description", desc), ("shape", o["shape"][1:]),
                                                   ("dtype", o["dtype"]),
                                                   ("trained_on", spec_in.get("trained_on"))) if v is not None}
    js = {"format": JSON_FORMAT, "name": name, "version": version,
          "input": {"name": image["name"], "dtype": image["dtype"], "shape": image["shape"][1:],
                    "color_space": color_space, "layout": "NHWC", "mean": mean, "std": std, "range": [lo, hi]},
          "outputs": js_outputs, **(extra or {})}
    files[JSON_FILE] = (json.dumps(js, indent=1, sort_keys=False) + "\n").encode("utf-8")
    model_files = [{"name": JSON_FILE, "description": "face-transfer: kinds, classes and units of every output, "
                    "input spec and the run's figures, as JSON", "type": "DESCRIPTIONS"}]
    meta_buf = _metadata_buffer({"name": name, "description": description, "version": version, "author": author,
                                 "license": license}, [in_spec], out_specs, model_files)
    return attach_metadata_buffer(buf, meta_buf, files)


def carry_metadata(source, rewritten) -> bytes:
    """`rewritten` (the bytes of a model re-serialised from `source`, e.g. by tensorflow's flatbuffer_utils,
    which keeps the TFLITE_METADATA buffer but drops the archive appended after the flatbuffer) with the
    metadata and associated files of `source` (a path or bytes). Unchanged when `source` has no metadata."""
    src, _ = _read_bytes(source)
    meta = metadata_buffer(src)
    if meta is None:
        return bytes(rewritten)
    return attach_metadata_buffer(rewritten, meta, _associated_files(src))


def metadata_buffer(path_or_bytes) -> bytes | None:
    """The raw TFLITE_METADATA flatbuffer of a file (None without one)."""
    buf, label = _read_bytes(path_or_bytes)
    return _model_io(buf, label)["metadata_entries"].get(METADATA_NAME)


def associated_files(path_or_bytes) -> dict[str, bytes]:
    """{name: content} of the files packed after the model (empty when none)."""
    return _associated_files(_read_bytes(path_or_bytes)[0])
