"""Break the model, the loss, the masks and the checkpoint selection on purpose, one mutation at a time, and check
that a test fails for each ("killed"). A mutation that survives means a test that cannot catch that breakage.

    python bench/mutants.py            # every mutation; prints killed/survived, exit 1 if any survived
    python bench/mutants.py -k mask    # those whose name contains "mask"

Each mutation is applied to a temporary copy of the tracked files (git ls-files), never to the work tree, and the
listed tests run there with PYTHONPATH pointing at the copy. Results: docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, LOOP = "train/model.py", "train/loop.py"
VARIANTS, METRICS = "train/variants.py", "train/metrics.py"
T_MODEL, T_GUARDS = "tests/test_train_model.py", "tests/test_train_guards.py"
T_CUT = "tests/test_predict_cut.py"
T_TABLE, T_VARIANTS = "tests/test_metric_table.py", "tests/test_variants.py"
T_DIRECT = "tests/test_training_direct.py"
EXPLAIN, T_EXPLAIN = "train/explain.py", "tests/test_explain.py"
SEARCH, T_SEARCH = "train/search.py", "tests/test_search.py"
TRACKING, T_TRACK = "train/tracking.py", "tests/test_tracking.py"
DATA, T_CURVE = "train/data.py", "tests/test_learning_curve.py"
SERVE, SERVICE, T_SERVE = "predict/serve.py", "predict/service.py", "tests/test_serve.py"
DECODING = "predict/decoding.py"
T_TEXT_AUG = "tests/test_text_variants.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str  # must occur exactly once in file
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "loss on one head only",
        LOOP,
        "    for t, out in logits.items():\n        y = labels[t]",
        "    for t, out in list(logits.items())[:1]:\n        y = labels[t]",
        (T_GUARDS,),
    ),
    Mutant(
        "text padding mask ignored",
        MODEL,
        '            x, x_valid = self._stream(text, text_len, "text")',
        '            x, x_valid = self._stream(text, text_len, "text")\n'
        "            x_valid = torch.ones_like(x_valid)",
        (T_GUARDS,),
    ),
    Mutant(
        "audio padding mask ignored",
        MODEL,
        '            a, a_valid = self._stream(audio, audio_len, "audio")',
        '            a, a_valid = self._stream(audio, audio_len, "audio")\n'
        "            a_valid = torch.ones_like(a_valid)",
        (T_GUARDS,),
    ),
    Mutant(
        "masked-mean pooling includes padding rows",
        MODEL,
        "    m = valid[..., None].to(x.dtype)\n    return (x * m).sum(1) / m.sum(1)",
        "    return x.mean(1)",
        (T_GUARDS,),
    ),
    Mutant(
        "flatten pooling includes padding rows",
        MODEL,
        "super().forward((x * valid[..., None]).flatten(1))",
        "super().forward(x.flatten(1))",
        (T_GUARDS,),
    ),
    Mutant(
        "test scores from the last epoch, not the selected checkpoint",
        LOOP,
        "        load_weights(model, self.weights_path, device)  # the validation-selected checkpoint",
        "        pass",
        (T_GUARDS,),
    ),
    Mutant(
        "checkpoint chosen on test instead of validation",
        LOOP,
        "        val_loss, val, _ = evaluate(model, self.val_b, data, self.weights, self.device, self.amp)",
        "        val_loss, val, _ = evaluate(model, self.test_b, data, self.weights, self.device, self.amp)",
        (T_GUARDS,),
    ),
    Mutant(
        "Bi-GRU call vector from the first layer's states",
        MODEL,
        "torch.cat([_masked_mean(out, mask), h_n[-2], h_n[-1]], dim=1)",
        "torch.cat([_masked_mean(out, mask), h_n[0], h_n[1]], dim=1)",
        (T_GUARDS,),
    ),
    Mutant(
        "bottleneck tokens never updated",
        MODEL,
        "        return x, y, (b_text + b_second) / 2",
        "        return x, y, b",
        (T_MODEL,),
    ),
    Mutant(
        "bottleneck tokens updated by the text branch only",
        MODEL,
        "        return x, y, (b_text + b_second) / 2",
        "        return x, y, b_text",
        (T_MODEL,),
    ),
    Mutant(
        "cross-modal layers not chained (each gets the branch's input)",
        MODEL,
        "        for layer in self:  # chained: each takes the previous output\n"
        "            y = layer(y, x_valid, audio, audio_valid)",
        "        for layer in self:\n            y = layer(x, x_valid, audio, audio_valid)",
        (T_MODEL,),
    ),
    Mutant(
        "cross-modal branch starts after the text branch's layers",
        MODEL,
        "            y, y_valid = self.second_branch(x, x_valid, a, a_valid)\n",
        "            h = x\n            for layer in self.main_layers:\n"
        "                h = layer(h, x_valid)\n"
        "            y, y_valid = self.second_branch(h, x_valid, a, a_valid)\n",
        (T_MODEL,),
    ),
    Mutant(
        "last bottleneck layer computes the second branch's tokens for nothing",
        MODEL,
        "last_rows=nb if last else 0\n        )",
        "last_rows=0\n        )\n        ys = ys[:, -nb:] if last else ys",
        (T_MODEL,),
    ),
    Mutant(
        "audio-path check accepts everything",
        VARIANTS,
        "            if problem:\n                return problem\n",
        "",
        (T_MODEL,),
    ),
    Mutant(
        "final bottleneck tokens not read (text branch alone)",
        MODEL,
        "        return x, self.norm(b).mean(1)",
        "        return x, self.norm(b).mean(1) * 0",
        (T_MODEL,),
    ),
    Mutant(
        "length groups written back in sorted order",
        MODEL,
        "            out[idx] = v",
        "            out[torch.sort(idx).values] = v",
        (T_MODEL,),
    ),
    Mutant(
        "length groups trimmed to their shortest text",
        MODEL,
        "else text[idx, : max(1, int(text_len[idx].max()))]",
        "else text[idx, : max(1, int(text_len[idx].min()))]",
        (T_MODEL,),
    ),
    Mutant(
        "length groups never formed",
        MODEL,
        "        return None if len(parts) == 1 else [order[a:b] for a, b in parts]",
        "        return None",
        (T_MODEL,),
    ),
    Mutant(
        "length-group split blind to audio lengths",
        MODEL,
        "size * ulen[None, :] * (omax + ulen[None, :])",
        "size * ulen[None, :] * (uoth.max() + ulen[None, :])",
        (T_MODEL,),
    ),
    Mutant(
        "narrow heads padded for the kernel but scaled by the padded width",
        MODEL,
        "            scale=hd**-0.5,\n",
        "",
        (T_MODEL,),
    ),
    Mutant(
        "CPU dropout mask keeps a fraction p instead of 1 - p",
        MODEL,
        "uniform_().lt_(keep).div_(keep)",
        "uniform_().ge_(keep).div_(keep)",
        (T_MODEL,),
    ),
    Mutant(
        "CPU dropout mask not rescaled by 1 / (1 - p)",
        MODEL,
        "uniform_().lt_(keep).div_(keep)",
        "uniform_().lt_(keep)",
        (T_MODEL,),
    ),
    Mutant(
        "stacked audio frames keep padding frames",
        MODEL,
        "    x = F.pad(x * real[..., None].to(x.dtype), (0, 0, 0, -a % stride))",
        "    x = F.pad(x, (0, 0, 0, -a % stride))",
        (T_GUARDS,),
    ),
    # predict cuts new recordings as the run's training segments were made (issue 23)
    Mutant(
        "predict cuts at pauses whatever the training segments were",
        "predict/run.py",
        'cut = "rows" if timed_rows and timed_transcript else "pauses"',
        'cut = "pauses"',
        (T_CUT,),
    ),
    Mutant(
        "transcript rows past the end of a truncated recording packed into it",
        "predict/run.py",
        "    inside = [p for p in pieces if p.start <= duration]",
        "    inside = list(pieces)",
        (T_CUT,),
    ),
    Mutant(
        "segment-length warning never fires on short segments",
        "pipeline/segment_profile.py",
        "        if m < self.p5 / 2:",
        "        if m < self.p5 / 20:",
        (T_CUT,),
    ),
    Mutant(
        "training segment policy read as pauses for timed rows",
        "pipeline/segment_profile.py",
        '"rows" if from_rows.mean() > 0.5 else "pauses",',
        '"pauses",',
        (T_CUT,),
    ),
    Mutant(
        "macro-F1 counts classes absent from truth and predictions as 0",
        METRICS,
        'lambda t, p, k: float(f1_score(t, p, average="macro", zero_division=0)),',
        "lambda t, p, k: float(\n"
        '                f1_score(t, p, labels=list(range(k)), average="macro", zero_division=0)\n'
        "            ),",
        (T_TABLE,),
    ),
    Mutant(
        "bootstrap macro-F1 averages over every class",
        METRICS,
        "    macro = np.divide(f1.sum(1), present, out=np.zeros(len(f1)), where=present > 0)",
        "    macro = f1.mean(1)",
        (T_TABLE,),
    ),
    Mutant(
        "selection ranks a lower-is-better metric upwards",
        METRICS,
        "        return v if METRIC_TABLE[name].higher_is_better or v == -math.inf else -v",
        "        return v",
        (T_TABLE,),
    ),
    Mutant(
        "selection ignores the metric's tie-breaks",
        METRICS,
        "        *(signed(t) for t in METRIC_TABLE[key].ties),\n",
        "",
        (T_TABLE,),
    ),
    Mutant(
        "flatten pooling no longer declares that it needs every text row",
        VARIANTS,
        "            needs_every_text_row=True,\n",
        "",
        (T_VARIANTS, T_MODEL),
    ),
    Mutant(
        "--no-cross-attention keeps the cross-modal branch",
        VARIANTS,
        'second_branch=("cross" if cfg.cross_attention else "audio") if both else "none",',
        'second_branch="cross" if both else "none",',
        (T_VARIANTS, T_MODEL),
    ),
    Mutant(
        "warm-up starts one step late",
        LOOP,
        "            return (step + 1) / w",
        "            return step / w",
        (T_DIRECT,),
    ),
    Mutant(
        "scheduler steps twice per optimizer step",
        LOOP,
        "                self.sched.step()\n",
        "                self.sched.step()\n                self.sched.step()\n",
        (T_DIRECT,),
    ),
    Mutant(
        "gradients not clipped",
        LOOP,
        "                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)\n",
        "",
        (T_DIRECT,),
    ),
    Mutant(
        "patience allows one epoch too many",
        LOOP,
        "        self.stopped = self.epochs_without_gain >= cfg.patience",
        "        self.stopped = self.epochs_without_gain > cfg.patience",
        (T_DIRECT,),
    ),
    Mutant(
        "the selection reads the first task, not --task",
        LOOP,
        "        sel = val[cfg.task]",
        "        sel = val[next(iter(val))]",
        (T_DIRECT,),
    ),
    Mutant(
        "the seed does not set the batch order",
        LOOP,
        "        self.gen = gen = torch.Generator().manual_seed(cfg.seed)",
        "        self.gen = gen = torch.Generator().manual_seed(0)",
        (T_DIRECT,),
    ),
    Mutant(
        "input statistics from every split",
        LOOP,
        '        train_rows = self.data.used_rows(self.splits["train"])',
        '        train_rows = self.data.used_rows(self.data.indices("all"))',
        (T_DIRECT,),
    ),
    Mutant(
        "input std not applied",
        MODEL,
        "        x = (x.to(cls.dtype) - mean.to(cls.dtype)) / std.to(cls.dtype)",
        "        x = x.to(cls.dtype) - mean.to(cls.dtype)",
        (T_DIRECT,),
    ),
    Mutant(
        "padded segments fed to the Bi-GRU",
        MODEL,
        "        out, h_n = self.gru(packed)\n"
        "        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])",
        "        out, h_n = self.gru(padded)",
        (T_DIRECT,),
    ),
    Mutant(
        "the loss reads context utterances",
        LOOP,
        "            out, y = out[mask], y[mask]",
        "            pass",
        (T_DIRECT,),
    ),
    Mutant(
        "context utterances marked as labelled",
        "train/data.py",
        "        mask = valid.copy()",
        "        mask = np.ones_like(valid)",
        (T_DIRECT,),
    ),
    # explanations (train/explain.py): what a wrong explanation would be
    Mutant(
        "explain: the left-out segment is still fed to the Bi-GRU",
        EXPLAIN,
        'v.add("loo", c, s, [real[i] for i in others], others)',
        'v.add("loo", c, s, [real[i] for i in range(n)][: len(others)], others)',
        (T_EXPLAIN,),
    ),
    Mutant(
        "explain: audio and text baselines swapped",
        EXPLAIN,
        '        if modality == "audio":\n            versions.append(',
        '        if modality == "text":\n            versions.append(',
        (T_EXPLAIN,),
    ),
    Mutant(
        "explain: contribution sign flipped",
        EXPLAIN,
        "effect[name][key] = float(p[key[1]] - virt[name][0][j])",
        "effect[name][key] = float(virt[name][0][j] - p[key[1]])",
        (T_EXPLAIN,),
    ),
    Mutant(
        "explain: another class than the predicted one explained",
        EXPLAIN,
        "cls = r.pred if chosen is None else chosen[name]",
        "cls = (r.pred + 1) % r.probs.shape[1] if chosen is None else chosen[name]",
        (T_EXPLAIN,),
    ),
    Mutant(
        "explain: baseline of zeros instead of the training mean frame",
        EXPLAIN,
        'return getattr(model, f"{modality}_mean").float().expand(*x.shape[:-1], -1)',
        "return torch.zeros_like(x, dtype=torch.float32)",
        (T_EXPLAIN,),
    ),
    Mutant(
        "explain: segment level, a neighbour's effect read at the wrong utterance",
        EXPLAIN,
        'by_neighbour = {s: moved[("loo", c, s)][u] for s in range(n) if s != u}',
        'by_neighbour = {s: moved[("loo", c, s)][s - 1 if s else 1] for s in range(n) if s != u}',
        (T_EXPLAIN,),
    ),
    Mutant(
        "search: trials score the test split",
        SEARCH,
        "run = TrainingRun(cfg, loaded=loaded, score_test=False, parent=parent)",
        "run = TrainingRun(cfg, loaded=loaded, parent=parent)",
        (T_SEARCH,),
    ),
    Mutant(
        "search: a killed run's trial left running on resume (never replaced)",
        SEARCH,
        "orphans = fail_orphans(study) if opts.resume else []",
        "orphans = []",
        (T_SEARCH,),
    ),
    Mutant(
        "search: a failed trial counted as finished",
        SEARCH,
        "states=(TrialState.COMPLETE, TrialState.PRUNED))",
        "states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))",
        (T_SEARCH,),
    ),
    Mutant(
        "search: the pruner compares from the first epoch",
        SEARCH,
        "n_startup_trials=5, n_warmup_steps=2",
        "n_startup_trials=5, n_warmup_steps=1",
        (T_SEARCH,),
    ),
    Mutant(
        "learning curve: statistics from the whole training split",
        LOOP,
        'train_rows = self.data.used_rows(self.splits["train"])',
        'train_rows = self.data.used_rows(self.data.indices("train"))',
        (T_CURVE,),
    ),
    Mutant(
        "learning curve: one draw over all calls, not per label",
        DATA,
        'key = (data.base_labels[c] if data.labelled[c] else "") if data.level == "call" else ""',
        'key = ""',
        (T_CURVE,),
    ),
    Mutant(
        "learning curve: priors from the whole training split",
        LOOP,
        '"priors": training_priors(self.data, self.splits["train"])',
        '"priors": training_priors(self.data)',
        (T_CURVE,),
    ),
    Mutant(
        "tracking: per-epoch metrics not recorded",
        LOOP,
        "self.tracked.log_metrics(epoch_scalars(row), step=epoch)",
        "pass",
        (T_TRACK,),
    ),
    Mutant(
        "tracking: a failing tracker stops the run",
        TRACKING,
        "            self.broken = True\n",
        "            raise\n",
        (T_TRACK,),
    ),
    Mutant(
        "tracking: a failing tracker warns on every call",
        TRACKING,
        "        if self.broken:\n            return None\n",
        "",
        (T_TRACK,),
    ),
    Mutant(
        "tracking: trials are not children of the sweep's run",
        TRACKING,
        'tags["mlflow.parentRunId"] = parent.run_id',
        "pass",
        (T_TRACK,),
    ),
    Mutant(
        "tracking: the interval bounds swapped",
        TRACKING,
        'out[f"{split}/{task}/{name}_ci_low"] = float(low)',
        'out[f"{split}/{task}/{name}_ci_low"] = float(high)',
        (T_TRACK,),
    ),
    Mutant(
        "dask: each trial loads the cache again",
        SEARCH,
        "        if key not in _WORKER_CACHES:\n",
        "        if True:\n",
        ("tests/test_search_dask.py",),
    ),
    Mutant(
        "dask: the trials run in this process, not on the workers",
        SEARCH,
        "    if not (opts.scheduler or opts.dask_workers):\n",
        "    if True:\n",
        ("tests/test_search_dask.py",),
    ),
    Mutant(
        "tracking: a resumed run starts a new tracked run",
        TRACKING,
        "    if old is not None:  # --resume",
        "    if False:  # --resume",
        (T_TRACK,),
    ),
    Mutant(
        "serve: any API key is accepted",
        SERVE,
        'scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())',
        'scheme.lower() == "bearer" or True',
        (f"{T_SERVE}::test_api_key_is_required_and_compared",),
    ),
    Mutant(
        "serve: the upload limit is checked only from Content-Length",
        SERVE,
        "            if self.received > self.limit:\n",
        "            if False:\n",
        (f"{T_SERVE}::test_upload_limit_is_enforced_while_the_body_streams",),
    ),
    Mutant(
        "serve: uploads are left in the temporary folder",
        SERVE,
        "                up.audio.unlink(missing_ok=True)",
        "                pass",
        (f"{T_SERVE}::test_upload_limit_is_enforced_while_the_body_streams",),
    ),
    Mutant(
        "serve: every call is its own model batch",
        SERVICE,
        "            while len(jobs) < self.max_batch:",
        "            while False:",
        (f"{T_SERVE}::test_concurrent_requests_share_batches_and_each_gets_its_own_answer",),
    ),
    Mutant(
        "serve: a batch's answers go to the wrong requests",
        SERVICE,
        "            j.done.set_result((j.result, rows))",
        "            j.done.set_result((jobs[0].result, rows))",
        (f"{T_SERVE}::test_concurrent_requests_share_batches_and_each_gets_its_own_answer",),
    ),
    Mutant(
        "serve: errors name the server's upload path",
        SERVICE,
        '.replace(path, "the upload")',
        "",
        (f"{T_SERVE}::test_hostile_and_broken_files_get_one_line_4xx_and_the_server_goes_on",),
    ),
    Mutant(
        "serve: a non-loopback host without a key is allowed",
        "predict/serve_config.py",
        "    if key is None and not cfg.insecure and not is_loopback(cfg.host):",
        "    if False:",
        (f"{T_SERVE}::test_exposed_host_without_a_key_is_refused",),
    ),
    Mutant(
        "decoding: a worker past its time is kept (still busy with the old file)",
        DECODING,
        "            if not p.conn.poll(self.limits.timeout_s):\n                p = self._replace(p)",
        "            if not p.conn.poll(self.limits.timeout_s):\n                pass",
        (f"{T_SERVE}::test_bounded_decoder_times_out_caps_memory_and_survives_a_dead_worker",),
    ),
    Mutant(
        "decoding: no memory cap on the workers",
        DECODING,
        "    _limit_memory(limits.memory_mb)\n",
        "",
        (f"{T_SERVE}::test_bounded_decoder_times_out_caps_memory_and_survives_a_dead_worker",),
    ),
    Mutant(
        "decoding: a truncated WAV is decoded as far as it goes",
        DECODING,
        "            if reason:\n                raise AudioError(reason)",
        "            if False:\n                raise AudioError(reason)",
        (f"{T_SERVE}::test_hostile_and_broken_files_get_one_line_4xx_and_the_server_goes_on",),
    ),
    Mutant(
        "store: chunks written without checksums",
        "pipeline/store.py",
        "    return (*(compressors or ()), zarr.codecs.Crc32cCodec())",
        "    return tuple(compressors)",
        ("tests/test_store_verify.py",),
    ),
    Mutant(
        "verify: --repair leaves damaged rows marked done",
        "pipeline/verify.py",
        "            flags[r - start] = skipped[r - start] = False",
        "            skipped[r - start] = False",
        ("tests/test_store_verify.py",),
    ),
    Mutant(
        "verify: padding past a row's length not checked",
        "pipeline/verify.py",
        "            elif np.any(hidden[i, n:]):",
        "            elif False:",
        ("tests/test_store_verify.py",),
    ),
    Mutant(
        "verify: --repair leaves the damaged chunk in place",
        "pipeline/verify.py",
        "        store.write_slab(\n",
        "        (lambda *a: None)(\n",
        ("tests/test_store_verify.py",),
    ),
    Mutant(
        "channel: left and right swapped",
        "extract/audio.py",
        'CHANNEL_INDEX = {"left": 0, "right": 1}',
        'CHANNEL_INDEX = {"left": 1, "right": 0}',
        ("tests/test_channels.py",),
    ),
    Mutant(
        "channel: --channel customer ignores each call's column",
        "extract/encode.py",
        "    return seg.channel\n",
        '    return "left"\n',
        ("tests/test_channels.py",),
    ),
    Mutant(
        "channel: predict mixes the channels whatever the run was trained on",
        "predict/run.py",
        "    channel = channel or pred.channel or pred.audio_channel(None)\n",
        '    channel = "mix"\n',
        ("tests/test_channels.py",),
    ),
    Mutant(
        "roles: predict gives new transcripts without the speakers",
        "predict/run.py",
        "    roles = pred.encoders.cfg.roles  # as the run's training text was written",
        '    roles = "none"',
        ("tests/test_roles.py",),
    ),
    Mutant(
        "roles: --roles prefix writes nothing before the utterances",
        "pipeline/manifest.py",
        '    return f"{speaker}: {text}" if speaker else text',
        "    return text",
        ("tests/test_roles.py",),
    ),
    Mutant(
        "roles: predict writes the speaker before a long row's first piece only",
        "predict/run.py",
        '        texts += [role_text(p.speaker, t) if roles == "prefix" else t for t in shares]',
        '        texts += [role_text(p.speaker, t) if roles == "prefix" and not i else t for i, t in enumerate(shares)]',
        ("tests/test_roles.py",),
    ),
    Mutant(
        "units: a customer's reply starts a unit of its own",
        "pipeline/units.py",
        '        if not units or (role == "agent" and not same_turn):',
        "        if not units or not same_turn:",
        ("tests/test_units.py",),
    ),
    Mutant(
        "units: merged past the segment limit",
        "pipeline/units.py",
        "            if not open_before and math.isfinite(end) and end - start <= max_seconds + 1e-9:",
        "            if not open_before and math.isfinite(end):",
        ("tests/test_units.py",),
    ),
    Mutant(
        "units: predict cuts by rows whatever the run's units were",
        "predict/run.py",
        '        self.units = self.encoders.cfg.units if cfg.units == "auto" else cfg.units',
        '        self.units = "rows" if cfg.units == "auto" else cfg.units',
        ("tests/test_units.py",),
    ),
    Mutant(
        "units: a unit's audio ends at its first row",
        "extract/segmentation.py",
        "        end=last.end,",
        "        end=first.end,",
        ("tests/test_units.py",),
    ),
    Mutant(
        "remote data: the fingerprint ignores an object's ETag",
        "pipeline/remote_files.py",
        '    return [int(info.get("size") or 0), str(tag or "")]',
        '    return [int(info.get("size") or 0)]',
        ("tests/test_remote_data.py",),
    ),
    Mutant(
        "remote data: a CSV may name objects outside the dataset's prefix",
        "pipeline/manifest.py",
        "            if not allow_outside and posixpath.commonpath([root, key]) != root:",
        "            if False:",
        ("tests/test_remote_data.py",),
    ),
    Mutant(
        "remote data: predict lists no objects for a URL glob",
        "predict/cli.py",
        "            hits = _url_glob(p)",
        "            hits = sorted(glob.glob(p))",
        ("tests/test_remote_data.py",),
    ),
    Mutant(
        "faults: storage retries are not counted",
        "pipeline/retries.py",
        "                self._counts[key] += 1",
        "                pass",
        ("tests/test_s3_faults.py",),
    ),
    Mutant(
        "faults: a lock this process let go of is never taken over",
        "pipeline/lock.py",
        "        return str(path) not in _HELD",
        "        return False",
        ("tests/test_s3_faults.py",),
    ),
    Mutant(
        "faults: a failed lock removal hides the error that stopped the run",
        "pipeline/lock.py",
        "            except OSError as e:",
        "            except KeyError as e:",
        ("tests/test_s3_faults.py",),
    ),
    Mutant(
        "text variants: resident audio of a text row read from its own (empty) row",
        DATA,
        "                self._amap = at[torch.as_tensor(data.audio_row)]",
        "                at[torch.as_tensor(data.audio_row[audio_rows])] = torch.arange(len(audio_rows))\n"
        "                self._amap = at",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "text variants: streamed audio of a text row read from its own (empty) row",
        DATA,
        "        if np.array_equal(src, rows):",
        "        if True:",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "text variants: a variant of an original without audio is trained on",
        DATA,
        "        base = self._collect_calls(table, usable & usable[self.audio_row])",
        "        base = self._collect_calls(table, usable)",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "text variants: copies per class ignored",
        "extract/augment.py",
        "        return (self.per_class or {}).get(label, self.variants)",
        "        return self.variants",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "text variants: the audio of every row is encoded and stored",
        "extract/encode.py",
        "        if seg.audio_of:  # a text variant: its audio rows are its original's, never read here",
        "        if False:",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "text variants: the swap ignores the reading in context",
        "extract/text_augment.py",
        "    for ch, (reading, *_) in zip(text, readings):",
        "    for ch, (reading, *_) in zip(text, readings[1:] + readings[:1]):",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "text variants: verify accepts audio of its own in a text row",
        "pipeline/verify.py",
        "                if n or np.any(hidden[i]):",
        "                if False:",
        (T_TEXT_AUG,),
    ),
    Mutant(
        "asr channels: a stereo recording is transcribed mixed",
        "predict/run.py",
        '    if channel is None or pred.cfg.asr_channels != "split":',
        "    if True:",
        ("tests/test_roles.py",),
    ),
    Mutant(
        "asr channels: the customer's channel is not used to name the speakers",
        "predict/run.py",
        "    speakers = channel_speakers(len(channels), index)",
        "    speakers = channel_speakers(len(channels), None)",
        ("tests/test_roles.py",),
    ),
    Mutant(
        "long recordings: predict decodes the whole recording to cut it",
        "predict/run.py",
        '    if asr is None and pred.cfg.cutter == "energy":',
        "    if False:",
        ("tests/test_predict.py",),
    ),
    Mutant(
        "long recordings: a frame cut by a block's end is dropped",
        "predict/segmenter.py",
        "            x = np.concatenate([carry, block]) if len(carry) else block",
        "            x = block",
        (T_CUT,),
    ),
    Mutant(
        "long recordings: the resampler's tail is not flushed",
        "extract/audio.py",
        "        if stream is not None:  # the resampler's tail",
        "        if False:",
        (T_CUT,),
    ),
    Mutant(
        "long recordings: a streamed container keeps the padding past its duration",
        "extract/audio.py",
        "                stop = None if t1 is None else max(skip, int(round((t1 - first) * sr)))",
        "                stop = None",
        (T_CUT,),
    ),
    Mutant(
        "long recordings: a streamed container's last partial block is dropped",
        "extract/audio.py",
        "        if pending:\n            yield np.concatenate(pending, axis=1).T, sr",
        "        if False:\n            yield np.concatenate(pending, axis=1).T, sr",
        (T_CUT,),
    ),
    Mutant(
        "long recordings: a call's segments all encoded before any is reduced to its vector",
        "predict/run.py",
        "    step = len(segs) if explain else STREAM_SEGMENTS",
        "    step = len(segs)",
        ("tests/test_predict.py",),
    ),
    Mutant(
        "long recordings: a chunk's segment vectors out of order",
        "predict/run.py",
        "            vectors = iter(pred.vectors_of(ok))",
        "            vectors = iter(pred.vectors_of(ok).flip(0))",
        ("tests/test_predict.py",),
    ),
    Mutant(
        "long recordings: freed heap pages kept (no malloc_trim)",
        "pipeline/memory.py",
        "    lib.malloc_trim(0)",
        "    pass",
        ("tests/test_memory.py",),
    ),
    Mutant(
        "long recordings: large arrays left on the heap (no fixed mmap threshold)",
        "pipeline/memory.py",
        "    return lib is not None and bool(lib.mallopt(M_MMAP_THRESHOLD, int(threshold)))",
        "    return lib is not None",
        ("tests/test_memory.py",),
    ),
    Mutant(
        "units: a unit over the limit kept whole (cut into equal pieces downstream)",
        "pipeline/units.py",
        "        if math.isfinite(span) and span > max_seconds + 1e-9:",
        "        if False:",
        ("tests/test_units.py",),
    ),
    Mutant(
        "units: a split unit's last piece merged with the next unit",
        "pipeline/units.py",
        "            closed = True\n            continue",
        "            closed = False\n            continue",
        ("tests/test_units.py",),
    ),
    Mutant(
        "asr channels: msmtfn-serve transcribes an upload mixed",
        "predict/run.py",
        "        pieces, by_speaker = _recognise(pred, asr, path, x, channel, customer)",
        "        pieces, by_speaker = _recognise(pred, asr, path, x, None, customer)",
        ("tests/test_roles.py",),
    ),
    Mutant(
        "asr channels: the request's customer channel does not name the speakers",
        "predict/run.py",
        "    known = channel if own else (customer or pred.cfg.customer_channel)",
        "    known = channel if own else pred.cfg.customer_channel",
        ("tests/test_roles.py",),
    ),
]


def run(m: Mutant, timeout: int) -> tuple[str, float, str]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        for f in files:
            dst = Path(tmp) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / f).is_file():
                shutil.copy2(ROOT / f, dst)
        target = Path(tmp) / m.file
        src = target.read_text(encoding="utf-8")
        if src.count(m.old) != 1:
            return (
                "stale",
                0.0,
                f"the text to mutate occurs {src.count(m.old)} times in {m.file}: update MUTANTS",
            )
        target.write_text(src.replace(m.old, m.new), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": tmp}
        t0 = time.perf_counter()
        try:
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return "killed (timeout)", time.perf_counter() - t0, ""
        took = time.perf_counter() - t0
        failed = [
            ln for ln in r.stdout.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")
        ]
        return ("killed" if r.returncode != 0 else "SURVIVED"), took, (failed[0] if failed else "")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-k", default="", help="only mutations whose name contains this")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.k.lower() in m.name.lower()]
    bad = 0
    print(f"{'mutation':<70} {'result':<16} {'s':>6}  first failing test")
    for m in chosen:
        result, took, detail = run(m, args.timeout)
        bad += result in ("SURVIVED", "stale")
        print(f"{m.name:<70} {result:<16} {took:6.1f}  {detail}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
