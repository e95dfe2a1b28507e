"""Stage 2 of msmtfn: train the MSMT-FN fusion network, the Bi-GRU over a call's segments and the
task heads on a cache written by ``msmtfn-extract`` (never on the encoders).

Public API::

    train.config.TrainConfig          every option (frozen dataclass); .from_file(path, **overrides)
    train.variants.ModelConfig        what the model is made of (its parts by name), no training
    train.loop.fit(cfg) -> dict       trains, writes the run folder, returns the metrics
    train.report.format_summary(m)    the one-screen table printed at the end of a run
    train.checkpoint.load_run(run_dir, device) -> (model, cfg)   a trained model in eval mode
    train.checkpoint.read_run_config(run_dir) -> dict            dims, cache fingerprint, scheme
    train.model.MSMTFN.forward(audio, audio_len, text, text_len, seg_counts) -> {task: logits}
    train.predictions.run_model       the one inference path (evaluation, prediction files and
                                      msmtfn-predict); train.metrics.reported_predictions: how
                                      every task is derived; train.metrics.METRIC_TABLE: the metrics
    train.cli.main                    the ``msmtfn-train`` click command (a thin layer over fit)

Run folder (``--out``, default ``runs/<dataset>/<time>-<flags>-s<seed>``): config.json,
model.safetensors (the validation-selected checkpoint, written atomically), metrics.json (with 95 %
bootstrap intervals), history.csv, predictions_valid.csv, predictions_test.csv, plots/*.png.

Defaults and why, each with its measurement, and every difference from the paper: docs/model.md.
In short: inputs standardised per hidden dimension with the training split's statistics; AdamW at
3e-4 (the paper's 1e-5 was for fine-tuning pretrained layers; these train from scratch), 5 % linear
warm-up then cosine decay, clipping at 1.0; masked-mean pooling (the paper's flatten is a
118M-parameter Linear at 200×768); checkpoint selection and early stopping on the validation split
only (the label scheme's metric, ties by accuracy, then loss; patience 8); the test split scored
once, with the selected checkpoint; 8 calls per step; bf16 autocast on CUDA.
"""
