"""Olive `user_script` of cargo-edgeai: the calibration data of an INT8 static workflow.

Registers the dataset `edgeai_calibration_dataset(model, calibration, max_length)`: cargo-edgeai's
calibration source (a folder of .npz/.npy samples keyed by input name, one .npz file, or a text
file tokenized with the tokenizer.json next to the model, else next to the text file), read and
checked against the model's inputs by onnx_driver.load_calibration as the onnxruntime path reads
it. Each item is (feed dict of numpy arrays, 0): one sample, already batched, for Olive's
no_auto_batch_dataloader.
onnx_driver.py sits next to this file (the data config's script_dir).
"""
from pathlib import Path

import onnx
from olive.data.registry import Registry

import onnx_driver


def calibration_request(model, calibration, max_length=128):
    """As olive_driver.calibration_request: tokenizer.json next to the model, else next to the text."""
    model, cal = Path(model), Path(calibration)
    where = model if (model.parent / "tokenizer.json").is_file() or not cal.is_file() else cal.parent
    return {"model": str(where), "calibration": str(cal), "max_length": int(max_length)}


@Registry.register_dataset()
def edgeai_calibration_dataset(model, calibration, max_length=128):
    m = onnx.load(str(model), load_external_data=False)
    req = calibration_request(model, calibration, max_length)
    samples = onnx_driver.load_calibration(req, onnx_driver.model_inputs(m), Path(model))
    return [(feed, 0) for _, feed in samples]
