"""bench_onnx.py's own plumbing: its options leave bench_encoder's alone, and --profile reads
py-spy's raw samples into each service thread's share of wall time."""

from __future__ import annotations

import pytest

from bench.bench_onnx import own_args, thread_shares


def test_model_option_reaches_bench_encoder() -> None:
    mine, rest = own_args(["--model", "glimpse-tiny", "--quantize", "int8"])
    assert rest == ["--model", "glimpse-tiny"]
    assert mine.quantize == "int8"
    assert mine.models == "glimpse-tiny,ViT-B-32"  # --models' default, not the model above


def test_thread_shares_classifies_leaf_frames() -> None:
    run = ("Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406)")
    raw = "\n".join([
        f"thread (11): glimpse-model;_loop (glimpse/encoder/batching.py:219);{run} 90",
        "thread (11): glimpse-model;_take_batch (glimpse/encoder/batching.py:180);"
        "Condition.wait (threading.py:327) 6",
        "thread (11): glimpse-model;_run_batch (glimpse/encoder/service.py:380) 4",
        "thread (12): glimpse-decode_0;_worker (concurrent/futures/thread.py:81) 75",
        "thread (12): glimpse-decode_0;_worker (concurrent/futures/thread.py:83);"
        "ImageFile.load (PIL/ImageFile.py:300) 25",
        "thread (10): MainThread;Runner.run (asyncio/runners.py:118) 50",
        "thread (13): uvloop_0;_worker (concurrent/futures/thread.py:81) 50",
    ])
    shares = thread_shares(raw)
    assert shares == pytest.approx({
        "model thread: in the ONNX run": 0.90,
        "model thread: waiting for a batch": 0.06,
        "model thread: preparing batches and answers": 0.04,
        "decode thread: idle": 0.75,
        "decode thread: decoding and preprocessing": 0.25,
        "event loop: idle": 1.0,
    })
