"""`train`: LoRA / QLoRA fine-tuning with answer-only loss, packing, checkpoints and resume.

The loop is our own (not HF Trainer) so that the objective, the batch stream and the checkpoint
contents are exactly what the tests pin down: a resumed run rebuilds the same micro-batch stream
(epoch e = samples shuffled with seed + e), skips what was done, and restores optimizer, scheduler
and RNG states, so it continues the same loss curve.

    run.py     train(): setup, loop, finish, under the run directory's lock
    setup.py   data, run directory, tokenizer, samples, optimizer, resume (outdir.py, model.py)
    loop.py    steps, evaluations, checkpoints; signals.py stops it cleanly
    decode.py  eval SARI: the live model decodes a fixed subset of the eval records
    best.py    the best evaluation's weights, kept on disk: the adapter is that step's
    step.py    one optimizer step (grad accumulation, token-mean loss, clipping)
    finish.py  adapter, loss curve, summary
    optim.py   optimizer and learning-rate schedule
"""

from qdtool.core.training.outdir import default_output_dir, prepare_output_dir
from qdtool.core.training.run import train
from qdtool.core.training.state import TrainResult

__all__ = ["TrainResult", "default_output_dir", "prepare_output_dir", "train"]
