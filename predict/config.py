"""``msmtfn-predict``'s settings: one frozen dataclass whose fields are the command's options
(predict/cli.py generates them). torch-free, so ``--help`` and bad options answer at once."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.cli import option_field

from .segmenter import CUTTERS

CUTS = ("auto", "rows", "pauses")
UNIT_CHOICES = ("auto", "rows", "turns")
ASR_CHANNELS = ("split", "mix")


class PredictError(Exception):
    """Something that stops the whole prediction (a bad run folder, wrong encoders, unusable
    transcripts)."""


@dataclass(frozen=True)
class PredictConfig:
    run: str = option_field(
        help="msmtfn-train run folder (config.json + model.safetensors), or a msmtfn-sweep folder "
        "(or its best): the trial it selected on validation."
    )
    audio: tuple[str, ...] = option_field(
        (),
        "Recordings (repeatable; globs like 'calls/*.wav' are expanded). Call id = file stem.",
    )
    transcripts: str | None = option_field(
        None, "CSV call_id,start,end,text (seconds into the recording)."
    )
    asr: str | None = option_field(
        None, "Speech recognition model (hub id or folder) instead of --transcripts."
    )
    asr_channels: str = option_field(
        "split",
        "With --asr, a recording of 2+ channels (agent and customer recorded apart): split = each "
        "channel transcribed on its own, each utterance named by its channel (customer/agent where "
        "the customer's channel is known: --customer-channel or the run's --channel; else "
        "left/right), so --units turns and --roles prefix have speakers; mix = one transcript of "
        "the channels mixed.",
        choices=ASR_CHANNELS,
    )
    device: str = option_field("auto", "auto | cpu | cuda | cuda:N (auto = cuda when available)")
    dtype: str = option_field(
        "run",
        "Encoders' compute dtype: run (the cache's; float32 on CPU), float32, float16, bfloat16.",
    )
    audio_model: str | None = option_field(
        None, "Where to read the run's audio encoder (identity is checked)."
    )
    text_model: str | None = option_field(
        None, "Where to read the run's text encoder (identity is checked)."
    )
    customer_channel: str | None = option_field(
        None,
        "The customer's channel of the new recordings (left, right or N), for a run trained with "
        "--channel customer (other runs read the channel they were trained on).",
    )
    cut: str = option_field(
        "auto",
        "How recordings are cut into segments: auto = as the run's training segments were made "
        "(by the transcript's rows when training used timed rows and --transcripts is given, else "
        "at pauses into pieces of the training's lengths); rows = one segment per transcript row; "
        "pauses.",
        choices=CUTS,
    )
    units: str = option_field(
        "auto",
        "With --cut rows (or auto): turns = the transcript's rows grouped into conversation units "
        "(an agent turn and the customer's reply, merged up to the run's segment limit; its speaker "
        "column says who speaks), rows = one segment per row; auto = as the run's training "
        "segments were made (--units of msmtfn-extract).",
        choices=UNIT_CHOICES,
    )
    cutter: str = option_field(
        "energy",
        "Where long recordings are cut: quietest frames (energy) or Silero VAD non-speech (vad).",
        choices=CUTTERS,
    )
    search_seconds: float = option_field(
        10.0, "How far before the segment limit a pause is looked for."
    )
    batch_calls: int = option_field(0, "Calls per model batch (0 = the run's).")
    group_calls: int = option_field(32, "Calls decoded and encoded together (bounds memory).")
    batch_seconds: float = option_field(
        0.0, "Padded audio seconds per encoder batch (0: 1280 on CUDA, 160 on CPU)."
    )
    num_workers: int = option_field(0, "Decode/tokenise processes for the encoders.")
    threads: int = option_field(
        0, "CPU threads for torch (0 = the run's --threads, else torch's default)."
    )
    explain: str | None = option_field(
        None,
        "Folder for why each call scored so: explanations.csv (per segment and task: its "
        "contribution, split into audio and text, and its top words and audio spans) and an "
        "offline HTML report (index.html, calls/<call_id>.html).",
    )
    explain_segments: int = option_field(
        0,
        "With --explain: segments per call whose words and audio stretches are attributed too (the "
        "strongest first; -1: all). Each costs ~50 single-segment model runs: on CPU --explain "
        "takes ~2.3x a plain predict's time, ~7.8x with 1 (docs/benchmarks.md).",
    )
    explain_method: str = option_field(
        "ablation",
        "With --explain: how words and audio stretches are attributed: ablation (p minus p with "
        "one token / one stretch replaced by the training mean frame) or ig (integrated gradients; "
        "additive, but unstable where the probability saturates).",
        choices=("ablation", "ig"),
    )
    explain_steps: int = option_field(16, "With --explain-method ig: integrated-gradient steps.")
    trust_remote_code: bool = option_field(False, "Allow model code from the hub (encoders, ASR).")
    progress: bool = option_field(True, "A progress bar and info lines.")

    def __post_init__(self):
        object.__setattr__(self, "audio", tuple(str(a) for a in self.audio))
        # no source and no recordings: the model alone (msmtfn-serve: the text comes per request)
        if (self.transcripts and self.asr) or not (self.transcripts or self.asr or not self.audio):
            raise PredictError("give exactly one of --transcripts CSV or --asr MODEL")
        if self.explain_steps < 1:
            raise PredictError(f"--explain-steps {self.explain_steps}: give at least 1")
        if self.cut not in CUTS:
            raise PredictError(f"--cut {self.cut}: valid are {', '.join(CUTS)}")
        if self.units not in UNIT_CHOICES:
            raise PredictError(f"--units {self.units}: valid are {', '.join(UNIT_CHOICES)}")
        if self.units == "turns" and self.cut == "pauses":
            raise PredictError("--units turns groups the transcript's rows: not with --cut pauses")
        if self.device == "auto":  # as the command line: cuda when available
            from pipeline.device import resolve_device

            object.__setattr__(self, "device", str(resolve_device(self.device)))
