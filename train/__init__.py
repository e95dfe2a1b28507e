"""Stage 2 of msmtfn: train the MSMT-FN fusion network, the Bi-GRU over a call's segments and the
task heads on a cache written by ``msmtfn-extract`` (never on the encoders).

Public API
    train.config.TrainConfig            every option (frozen dataclass); TrainConfig.from_file(path,
    **overrides)
    train.loop.fit(cfg) -> dict         trains, writes the run folder, returns the metrics
    (``["run_dir"]``)
    train.report.format_summary(m)      the one-screen table printed at the end of a run
    train.checkpoint.load_run(run_dir, device) -> (model, cfg)     a trained model in eval mode
    train.checkpoint.read_run_config(run_dir) -> dict              dims, cache fingerprint, label
    scheme
    train.model.MSMTFN.forward(audio, audio_len, text, text_len, seg_counts) -> {task: logits
    (calls, k)}
    train.predictions.run_model / decode / score_cache   the one inference path (evaluation,
    prediction files,
                                        msmtfn-predict); train.metrics.reported_predictions: how
                                        every task is derived
    train.cli.main                      the ``msmtfn-train`` click command (a thin layer over
    ``fit``)

Run folder (``--out``, default ``runs/<dataset>/<time>-<flags>-s<seed>``): config.json,
model.safetensors (the validation-selected checkpoint, written atomically), metrics.json (with 95 %
bootstrap intervals), history.csv, predictions_valid.csv, predictions_test.csv, plots/*.png.

Defaults and why (the architecture and every difference from the paper, each with its measurement:
docs/model.md)
* Inputs standardised per hidden dimension with the training split's statistics (train/normalise.py;
buffers
  saved with the weights): without it the demo task is not learned in 20 epochs (docs/model.md).
* Learning rate 3e-4 (AdamW, weight decay 0.01, 5 % linear warm-up then cosine decay, one scheduler
for the whole
  run, gradient clipping at 1.0). The paper's 1e-5 was tuned for fine-tuning pretrained layers; here
  every layer
  is trained from scratch on frozen features. On a synthetic cache whose 5-class label needs both
  modalities
  (bench/lr_frozen_features.py cue, 400 calls, small dims, 20 epochs, 2 seeds, test 5-class
  accuracy; majority
  class 0.33): lr 1e-5 0.17 (CLS pooling; has not left its initial guess after 20 epochs), 1e-4 0.33
  (mean) /
  0.36 (CLS) / 0.33 (flatten), all still improving at epoch 20; 3e-4 0.34 (CLS); 1e-3 0.47 (mean) /
  0.35 (CLS) /
  0.44 (flatten). 3e-4 sits between the measured best and what usually stays stable for 768-wide
  attention
  layers; sweep a real cache with ``bench/lr_frozen_features.py --cache ... --full-size`` on a GPU.
* Segment vector: masked mean over the text branch's valid positions (CLS included), joined with the
final
  bottleneck tokens. The paper's flatten
  ((T+1)*d -> d, ``--pooling flatten``) costs a 118M-parameter Linear at 200x768 (most of the model,
  for 877
  calls) and forces every batch to carry all 199 text rows; CLS (``--pooling cls``) is the third
  option. Same
  benchmark at lr 1e-3: mean 0.47, flatten 0.44, CLS 0.35.
* Checkpoint selection and early stopping use the validation split only: macro-F1 of ``--task``
(default the
  5-class task), ties broken by accuracy, then by validation loss; patience 8 epochs. Macro-F1
  because the
  classes are imbalanced (a constant prediction scores high accuracy, zero macro-F1 for the other
  classes).
  The test split is scored once, at the end, with the selected checkpoint.
* Calls per step 8 (all their segments batched into one (S, T, d) tensor for the per-segment fusion,
then
  scattered into (calls, max segments, d) for the packed Bi-GRU); ``--grad-accum`` multiplies it.
* ``--no-bigru``: segment vectors are mean-pooled over the call's valid segments before the heads.
* ``--no-mtl``: only the ``--task`` head exists and trains; the coarser tasks are still reported,
derived from its
  predictions through the label maps (marked with * in the table) where the classes nest.
* bf16 autocast on CUDA (``--no-amp`` to turn off); features stay float16 in memory and are cast per
batch.
* On a shared CPU, ``--threads 1`` avoids OpenMP spin-wait slow-downs (we saw 10-50x on a busy
2-core box).
"""
