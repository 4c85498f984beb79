"""Audio benchmark: our pipeline (Silero VAD + segmenter + engine) side by side
with faster-whisper's own `transcribe(vad_filter=True)`, same model, same
audio, same run.

Reports real-time factor (processing seconds / audio seconds), word error
rate, VAD cost per 32 ms chunk, and end-of-speech -> final-text latency over a
real-time file replay.  Needs espeak-ng and sox for the test speech.

    python tools/bench_audio.py [--repeat 3] [--threads 2] [--model tiny.en]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from audio_speech import SR, build_recording, wer  # noqa: E402


SENTENCES = [
    "Hello, my name is John and I live in London.",
    "The meeting starts at nine o'clock tomorrow morning.",
    "Can you send me the report by Friday?",
    "I would like a cup of coffee with milk, please.",
    "The train to Paris leaves from platform four.",
    "Please remember to close the window before you leave.",
    "We went to the beach last summer and swam every day.",
    "My phone battery is almost empty.",
    "The children are playing football in the park.",
    "She bought three apples and a loaf of bread.",
    "It is going to rain this afternoon, so take an umbrella.",
    "Thank you very much for your help yesterday.",
    "The library closes at six in the evening.",
    "Turn left at the next traffic light.",
    "Our new office has a beautiful view of the river.",
]


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--rounds", type=int, default=4, help="groups of 3 distinct sentences (about 13 s each, at most 5)")
    args = ap.parse_args()

    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from edge_runtime.audio.engines import create_engine
    from edge_runtime.audio.live import LiveTranscriber
    from edge_runtime.audio.microphone import FileReplaySource, Microphone
    from edge_runtime.audio.transcribe import TranscribeSettings, transcribe
    from edge_runtime.audio.vad import CHUNK, SileroVAD

    work = Path(tempfile.mkdtemp(prefix="bench_audio_"))
    rec = build_recording(work)  # the test recording: 3 sentences, used for the live replay
    # Distinct sentences (repeating one recording would trip Whisper's compression-ratio fallback).
    sentences = SENTENCES[: 3 * args.rounds]
    rng = np.random.default_rng(0)
    gaps = list(rng.uniform(0.8, 1.6, len(sentences) + 1))
    long_rec = build_recording(work, sentences=sentences, gaps=gaps)
    audio, reference = long_rec.audio, " ".join(long_rec.texts)
    seconds = audio.size / SR
    n_chunks = audio.size // CHUNK
    print(f"audio: {seconds:.1f} s of espeak-ng speech, {len(sentences)} sentences between 0.8-1.6 s silences, "
          f"model {args.model}, {args.threads} threads, best of {args.repeat}")

    engine = create_engine("whisper", args.model, threads=args.threads)
    fw_model = engine._model  # the very same CTranslate2 model for the reference runs

    # -- VAD cost
    with SileroVAD() as vad:
        def per_chunk():
            vad.reset()
            for i in range(n_chunks):
                vad(audio[i * CHUNK:(i + 1) * CHUNK])

        def batch():
            vad.reset()
            return vad.probabilities(audio)

        t_stream, _ = best(per_chunk, args.repeat)
        t_batch, _ = best(batch, args.repeat)
    t_fw_vad, _ = best(lambda: get_speech_timestamps(audio, VadOptions()), args.repeat)
    print("\nVAD cost per 32 ms chunk (ms):")
    print(f"  ours, one call per chunk (live path) {t_stream / n_chunks * 1e3:8.3f}")
    print(f"  ours, batched (file path)            {t_batch / n_chunks * 1e3:8.3f}")
    print(f"  faster-whisper get_speech_timestamps {t_fw_vad / n_chunks * 1e3:8.3f}   "
          f"ratio ours-batched/fw = {t_batch / t_fw_vad:.2f}")

    # -- whole-file transcription
    rows = []
    t, res = best(lambda: transcribe(audio, engine, sample_rate=SR), args.repeat)
    rows.append(("ours: Silero VAD + segmenter + whisper (beam 1)", t, res.text))
    unpacked = TranscribeSettings(pack=False)
    t, res = best(lambda: transcribe(audio, engine, sample_rate=SR, settings=unpacked), args.repeat)
    rows.append(("ours, one whisper call per segment (no packing)", t, res.text))

    def fw(beam: int):
        def run():
            segs, _ = fw_model.transcribe(audio, language="en", beam_size=beam, vad_filter=True)
            return " ".join(s.text.strip() for s in segs)
        return run

    t, text = best(fw(1), args.repeat)
    rows.append(("faster-whisper transcribe(vad_filter=True, beam 1)", t, text))
    t, text = best(fw(5), args.repeat)
    rows.append(("faster-whisper transcribe(vad_filter=True, beam 5, its default)", t, text))
    print(f"\nTranscription of {seconds:.1f} s:")
    print(f"  {'pipeline':66s} {'seconds':>8s} {'RTF':>7s} {'WER':>6s}")
    for name, t, text in rows:
        print(f"  {name:66s} {t:8.2f} {t / seconds:7.3f} {wer(reference, text):6.3f}")
    base = rows[0][1]
    for name, t, _ in rows[2:]:
        print(f"  ratio ours / {name.split(':')[0] if ':' in name else name}: {base / t:.2f}")

    # -- live latency over a real-time replay of one recording
    import soundfile as sf

    path = work / "replay.wav"
    sf.write(path, rec.audio, SR)
    with Microphone(FileReplaySource(path)) as mic:
        live = LiveTranscriber(mic, engine)
        finals = [e for e in live.run() if e.kind == "final"]
    lat = live.latencies
    print(f"\nLive replay ({rec.audio.size / SR:.1f} s, real time, 500 ms endpoint silence): "
          f"{len(finals)} utterances, end-of-speech -> final text: "
          f"median {statistics.median(lat):.2f} s, max {max(lat):.2f} s "
          f"(of which 0.50 s is the endpointing silence); overflows {mic.overflows}, dropped {mic.dropped_blocks}")
    print(f"  WER {wer(' '.join(rec.texts), ' '.join(e.text for e in finals)):.3f}")
    engine.close()
    print("\nGemma audio engine: not benchmarked here (needs a Gemma 4 E2B/E4B GGUF and its audio mmproj).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
