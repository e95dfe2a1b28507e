"""msmtfn-serve, started for real (uvicorn on a loopback port, in its own process) and spoken to over
HTTP: the numbers equal msmtfn-predict's for the same file and transcript, concurrent requests share
model batches and still get their own answers, the API key, upload limits while the body streams,
hostile files answered 4xx while the server goes on serving, and SIGTERM finishing the request in
flight."""

from __future__ import annotations

import csv
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
from click.testing import CliRunner
from conftest import KEY, ServeProcess, build_tiny_run, build_tiny_whisper

from predict.cli import main as predict_cli
from predict.decoding import BoundedDecoder, DecodeLimits, wav_truncation
from predict.run import PredictConfig, predict_calls
from predict.serve_cli import main as serve_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPTS = {
    "callA": [(0.0, 3.0, "你好我想了解一下"), (3.5, 9.0, "价格多少"), (12.0, 19.5, "好的谢谢")],
    "callB": [(0.5, 18.0, "不需要谢谢再见")],
    "callC": [(1.0, 6.0, "在吗"), (7.0, 15.0, "我考虑一下")],
}


def bursty(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Speech-like bursts (2-5 s) between pauses, so recordings are cut in their pauses."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * rate), np.float32)
    t = 0.0
    while t < seconds:
        n = int(rng.uniform(2.0, 5.0) * rate)
        a = int(t * rate)
        x[a : a + n] = 0.3 * rng.standard_normal(len(x[a : a + n]))
        t += n / rate + rng.uniform(0.4, 1.0)
    return x


@pytest.fixture(scope="module")
def served(tiny_encoders, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = build_tiny_run(root, tiny_encoders)["run"]
    calls = root / "calls"
    calls.mkdir()
    for i, name in enumerate(TRANSCRIPTS):
        sf.write(calls / f"{name}.wav", bursty(20.0, 8000, 10 + i), 8000)  # 320 kB each
    (root / "key").write_text(KEY + "\n")
    server = ServeProcess(
        run,
        root / "tmp",
        "--api-key-file",
        str(root / "key"),
        "--max-upload-mb",
        "1",
        "--batch-window-ms",
        "200",
    )
    yield {"server": server, "run": run, "calls": calls, "root": root}
    server.stop()


def as_json(name: str) -> list[dict]:
    return [{"start": a, "end": b, "text": t} for a, b, t in TRANSCRIPTS[name]]


def close(a: dict, b: dict, tol: float = 1e-6) -> None:
    """Two responses' predictions: the same classes, probabilities within ``tol``."""
    assert a.keys() == b.keys()
    for task in a:
        assert a[task]["class"] == b[task]["class"], task
        pa, pb = a[task]["probabilities"], b[task]["probabilities"]
        assert pa.keys() == pb.keys()
        for c in pa:
            assert abs(pa[c] - pb[c]) <= tol, (task, c, pa[c], pb[c])


def test_numbers_equal_msmtfn_predict_for_the_same_file_and_transcript(served, tmp_path):
    server, calls = served["server"], served["calls"]
    csv_path = tmp_path / "transcripts.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "start", "end", "text"])
        for name, rows in TRANSCRIPTS.items():
            w.writerows((name, *r) for r in rows)
    paths = [str(calls / f"{n}.wav") for n in TRANSCRIPTS]
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(
        predict_cli,
        ["--run", str(served["run"]), "--audio", *paths, "--transcripts", str(csv_path)]
        + ["--out", str(out), "--device", "cpu", "--threads", "1", "-q"],
    )
    assert res.exit_code == 0, res.output
    rows = {r["call_id"]: r for r in csv.DictReader(open(out, encoding="utf-8"))}
    exact = predict_calls(
        PredictConfig(
            run=str(served["run"]),
            audio=tuple(paths),
            transcripts=str(csv_path),
            device="cpu",
            threads=1,
            progress=False,
        )
    )
    for call in exact.calls:
        status, body = server.predict(
            Path(call.source), as_json(call.call_id), call_id=call.call_id
        )
        assert status == 200, body
        assert body["call_id"] == call.call_id and body["status"] == call.status == "ok"
        assert body["duration_s"] == call.duration
        assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [
            (s.start, s.end, s.text) for s in call.segment_rows
        ]
        mine = {
            t: {"class": p["label"], "probabilities": p["probs"]}
            for t, p in call.predictions.items()
        }
        close(body["predictions"], mine)
        row = rows[call.call_id]
        for task, p in body["predictions"].items():
            assert row[f"pred_{task}"] == p["class"]
            for c, v in p["probabilities"].items():
                assert abs(float(row[f"p_{task}_{c}"]) - v) <= 1e-6, (task, c)


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(served):
    server, calls = served["server"], served["calls"]
    names = list(TRANSCRIPTS)
    alone = {n: server.predict(calls / f"{n}.wav", as_json(n), call_id=n)[1] for n in names}
    before = requests.get(
        server.url + "/v1/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()["served"]
    jobs = [names[i % 3] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda n: server.predict(calls / f"{n}.wav", as_json(n), call_id=n), jobs)
        )
    after = requests.get(
        server.url + "/v1/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()["served"]
    for n, (status, body) in zip(jobs, answers):
        assert status == 200 and body["call_id"] == n, body
        close(body["predictions"], alone[n]["predictions"])
    assert after["calls"] - before["calls"] == 12
    # the 12 waited for each other within the window: fewer model batches than calls
    assert after["batches"] - before["batches"] < 12


def test_api_key_is_required_and_compared(served):
    server, wav = served["server"], served["calls"] / "callA.wav"
    for key in (None, "wrong", KEY + "x"):
        status, body = server.predict(wav, as_json("callA"), key=key)
        assert status == 401 and "API key" in body["error"], body
    r = requests.get(server.url + "/v1/info", timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    # probes and docs need no key
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "alive"}
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["audio"]
    info = requests.get(
        server.url + "/v1/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()
    assert info["label_scheme"] == "marketcalls" and info["run_id"].startswith("sha256:")
    assert [t["name"] for t in info["tasks"]] == ["5", "4", "3", "2"]
    assert info["tasks"][0]["classes"] == list("ABCDE")
    assert info["encoders"]["audio"] and info["encoders"]["text"]


def _raw_post(url: str, headers: dict, body: bytes = b"") -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.putrequest("POST", "/v1/predict")
    for k, v in headers.items():
        c.putheader(k, v)
    c.endheaders()
    if body:
        c.send(body)
    return c


def test_upload_limit_is_enforced_while_the_body_streams(served):
    server = served["server"]
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=b"}
    # a declared length over the limit: 413 before a byte of the body is sent
    c = _raw_post(server.url, {**auth, "Content-Length": str(5 * 2**20)})
    r = c.getresponse()
    assert r.status == 413 and "over 1 MB" in json.loads(r.read())["error"]
    # no length (chunked): 413 once 1 MB has come in, while the body is still unfinished
    head = (
        b'--b\r\nContent-Disposition: form-data; name="audio"; filename="../../escape.wav"\r\n\r\n'
    )
    c = _raw_post(server.url, {**auth, "Transfer-Encoding": "chunked"})
    block = b"\0" * 2**16
    c.send(b"%x\r\n%s\r\n" % (len(head), head))
    for _ in range(20):  # 1.25 MB, and no end of body
        c.send(b"%x\r\n%s\r\n" % (len(block), block))
    r = c.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"].startswith("request body is over")
    # the part written so far is gone; the client's name was never a path
    folder = next(server.tmp.glob("msmtfn-serve-*"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.iterdir()) == []
    assert not list(server.tmp.rglob("escape*")) and not (server.tmp.parent / "escape.wav").exists()
    status, _ = server.predict(served["calls"] / "callA.wav", as_json("callA"))
    assert status == 200


def test_hostile_and_broken_files_get_one_line_4xx_and_the_server_goes_on(served, tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from make_bad_inputs import make_corpus

    server = served["server"]
    expected = make_corpus(tmp_path / "bad", long=False)
    audio = tmp_path / "bad" / "corpus" / "audio"
    files = [
        audio / f"{item['segment_ids'][0]}.wav"
        for item in expected.values()
        if item.get("outcome") == "skipped"
    ]
    assert len(files) >= 6
    (tmp_path / "random.wav").write_bytes(np.random.default_rng(0).bytes(50_000))
    (tmp_path / "empty.wav").write_bytes(b"")
    ok = tmp_path / "ok.wav"
    sf.write(ok, bursty(3.0, 16000, 1), 16000, subtype="PCM_16")
    hours = bytearray(ok.read_bytes())
    at = hours.index(b"data")
    hours[at + 4 : at + 8] = (0xFFFFFF00).to_bytes(4, "little")  # ~37 h promised, 3 s held
    (tmp_path / "hours.wav").write_bytes(bytes(hours))
    files += [tmp_path / "random.wav", tmp_path / "empty.wav", tmp_path / "hours.wav"]
    for f in files:
        status, body = server.predict(f, [{"start": 0, "end": 1, "text": "好"}])
        assert 400 <= status < 500, (f.name, status, body)
        assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
        assert str(server.tmp) not in body["error"]  # the server's paths stay its own
    assert "promises 37.3 h" in server.predict(tmp_path / "hours.wav", [])[1]["error"]
    # bad requests around a good file
    wav = served["calls"] / "callA.wav"
    for transcript, why in (
        ("not json", "not JSON"),
        ({"start": 0}, "JSON list"),
        ([{"start": 5, "end": 1, "text": "x"}], "start ≤ end"),
    ):
        data = {"transcript": transcript if isinstance(transcript, str) else json.dumps(transcript)}
        with open(wav, "rb") as fh:
            r = requests.post(
                server.url + "/v1/predict",
                files={"audio": ("a.wav", fh)},
                data=data,
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=30,
            )
        assert r.status_code == 422 and why in r.json()["error"], r.text
    status, body = server.predict(wav)  # no transcript, and the server has no --asr
    assert status == 422 and "--asr" in body["error"]
    status, body = server.predict(wav, as_json("callA"), call_id="A")
    assert status == 200 and body["predictions"]["5"]["class"] in "ABCDE"


def test_explain_true_gives_each_segments_contribution_inline(served):
    server = served["server"]
    status, body = server.predict(
        served["calls"] / "callA.wav", as_json("callA"), call_id="A", explain="true"
    )
    assert status == 200, body
    rows = body["explanation"]
    tasks = {r["task"] for r in rows}
    assert tasks == set(body["predictions"])
    assert {r["segment"] for r in rows} == set(range(len(body["segments"])))
    for r in rows:
        assert r["class"] == body["predictions"][r["task"]]["class"]
        assert (
            abs(r["probability"] - body["predictions"][r["task"]]["probabilities"][r["class"]])
            < 1e-6
        )
        assert isinstance(r["contribution"], float)


def test_exposed_host_without_a_key_is_refused(tmp_path, monkeypatch):
    """Refused before anything loads (the run folder here does not even exist: checked later)."""
    monkeypatch.delenv("MSMTFN_API_KEY", raising=False)
    run = str(tmp_path / "no-run")
    res = CliRunner().invoke(serve_cli, ["--run", run, "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "no API key is set" in res.output, res.output
    assert res.output.strip().count("\n") == 0
    res = CliRunner().invoke(serve_cli, ["--run", run, "--api-key-file", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "cannot read the API key" in res.output
    # with a key (or --insecure) the same host passes that check and reaches the run's
    monkeypatch.setenv("MSMTFN_API_KEY", "k")
    res = CliRunner().invoke(serve_cli, ["--run", run, "--host", "0.0.0.0"])
    assert res.exit_code == 1 and "no such run folder" in res.output, res.output


def test_asr_requests_and_sigterm_finishes_the_request_in_flight(served, tmp_path):
    whisper = build_tiny_whisper(tmp_path / "whisper")
    server = ServeProcess(served["run"], tmp_path / "tmp", "--asr", str(whisper))
    try:
        wav = served["calls"] / "callB.wav"
        status, body = server.predict(wav, key=None)
        assert status == 200, body
        out, segs = tmp_path / "p.csv", tmp_path / "s.csv"
        res = CliRunner().invoke(
            predict_cli,
            ["--run", str(served["run"]), "--audio", str(wav), "--asr", str(whisper)]
            + [
                "--out",
                str(out),
                "--segments-out",
                str(segs),
                "--device",
                "cpu",
                "--threads",
                "1",
                "-q",
            ],
        )
        assert res.exit_code == 0, res.output
        texts = [r["text"] for r in csv.DictReader(open(segs, encoding="utf-8"))]
        assert [s["text"] for s in body["segments"]] == texts and any(texts)
        (row,) = csv.DictReader(open(out, encoding="utf-8"))
        for c, v in body["predictions"]["5"]["probabilities"].items():
            assert abs(float(row[f"p_5_{c}"]) - v) <= 1e-6

        long = tmp_path / "long.wav"
        sf.write(long, bursty(240.0, 8000, 3), 8000)
        answer = {}

        def call():
            answer["r"] = server.predict(long, [{"start": 0, "end": 5, "text": "好"}], key=None)

        seen = len(server.lines)  # the scoring line of this request, not of the one above
        t = threading.Thread(target=call)
        t.start()
        server.wait_for(r"call \S+: scoring", after=seen)
        server.proc.send_signal(signal.SIGTERM)
        t.join(120)
        status, body = answer["r"]
        assert status == 200 and body["duration_s"] > 200, body
        assert server.proc.wait(60) == 0, server.log
        assert not list((tmp_path / "tmp").glob("msmtfn-serve-*"))  # its upload folder removed
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url + "/healthz", timeout=5)
    finally:
        server.stop()


def test_bounded_decoder_times_out_caps_memory_and_survives_a_dead_worker(tmp_path):
    long = tmp_path / "long.flac"
    sf.write(long, np.zeros((48000 * 300, 2), np.float32), 48000)  # 5 min, 48 kHz stereo
    ok = tmp_path / "ok.wav"
    sf.write(ok, bursty(2.0, 16000, 0), 16000)
    d = BoundedDecoder(DecodeLimits(workers=1, timeout_s=0.05), 16000)
    try:
        assert "longer than 0.05 s" in str(d.decode(str(long)))
        assert d.decode(str(ok)).shape == (32000,)  # a fresh worker took over
    finally:
        d.close()
    d = BoundedDecoder(DecodeLimits(workers=1, memory_mb=40), 16000)
    try:
        assert "allocate" in str(d.decode(str(long)))  # 110 MiB of samples > 40 MB
        assert d.decode(str(ok)).shape == (32000,)
        (worker,) = d._all
        worker.wait_ready()
        worker.proc.kill()  # as a decoder crashing on a file would
        worker.proc.join()
        assert "decoder crashed" in str(d.decode(str(ok)))
        assert d.decode(str(ok)).shape == (32000,)
    finally:
        d.close()
    d = BoundedDecoder(DecodeLimits(workers=1, max_audio_minutes=2), 16000)
    try:
        assert "at most 2 min" in str(d.decode(str(long)))
    finally:
        d.close()
    assert wav_truncation(str(ok)) is None


def test_a_run_that_cannot_be_loaded_stops_the_server_with_one_line(served, tmp_path):
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(served["run"], bad)
    (bad / "model.safetensors").write_bytes(b"not a checkpoint")
    r = subprocess.run(
        [sys.executable, "-m", "predict.serve_cli", "--run", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("msmtfn-serve: ") and "model.safetensors" in last, r.stderr


def test_a_malformed_multipart_body_is_400(served):
    server = served["server"]
    body = b"--b\r\nnot a header line at all\r\n\r\nxx\r\n--b--\r\n"
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "multipart/form-data; boundary=b",
        "Content-Length": str(len(body)),
    }
    r = _raw_post(server.url, headers, body).getresponse()
    assert r.status == 400 and "malformed multipart" in json.loads(r.read())["error"]
    r = requests.post(
        server.url + "/v1/predict", data=b"{}", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    status, _ = server.predict(served["calls"] / "callA.wav", as_json("callA"))
    assert status == 200
