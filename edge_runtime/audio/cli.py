"""`edge-runtime transcribe | listen | assistant`.

Optional dependencies (soundfile, sounddevice, onnxruntime, faster_whisper)
are imported inside the command functions, never at import time.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from edge_runtime.rpc.cli import add_rpc_options


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speech engine")
    g.add_argument("--engine", default="auto", choices=["auto", "whisper", "gemma"],
                   help="speech engine (default: chosen from what is installed)")
    g.add_argument("--model", help="Whisper name or CTranslate2 folder, or a Gemma 4 / Gemma 3n E2B/E4B GGUF (gemma engine)")
    g.add_argument("--mmproj", help="the model's audio encoder (gemma engine): Gemma 4's projector GGUF or "
                   "Gemma 3n's audio.onnx")
    g.add_argument("--language", help="spoken language code, e.g. en (default: detect / English-only model)")
    g.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                   help="translate: the engine's own speech-to-English translation")
    g.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    g.add_argument("--translate-to", metavar="LANG",
                   help="translate into LANG: directly with the gemma engine, else the transcript "
                        "through the Gemma text model (cascade)")
    g.add_argument("--text-model", help="GGUF for --translate-to / assistant (default: the embedded model)")


def _make_engine(args: argparse.Namespace):
    from edge_runtime.audio.engines import audio_projector, choose_engine, create_engine
    from edge_runtime.hub.store import find

    pulled = find(args.model) if args.model and not os.path.exists(args.model) else None
    if pulled is not None:  # a pulled Gemma by name: its GGUF and its audio encoder / projector
        # none with audio: the first, so the engine says which file lacks an audio encoder
        args.model = pulled.model
        args.mmproj = args.mmproj or audio_projector(pulled.projectors) or (pulled.projectors or [None])[0]
    name = args.engine if args.engine != "auto" else choose_engine(args.model)
    options: dict[str, Any] = {}
    if name == "whisper":
        options["threads"] = args.threads
    elif name == "gemma":
        options.update(mmproj=args.mmproj, n_threads=args.threads)
        if args.translate_to:  # Gemma translates speech directly: no cascade needed
            options["target_language"] = args.translate_to
            args.task, args.translate_to = "translate", None
    return create_engine(name, args.model, **options)


def _segmenter_args(p: argparse.ArgumentParser, min_silence_ms: int) -> None:
    g = p.add_argument_group("voice activity")
    g.add_argument("--threshold", type=float, default=0.5, help="speech probability to open a segment")
    g.add_argument("--min-silence-ms", type=int, default=min_silence_ms, help="silence that ends a segment")
    g.add_argument("--max-segment", type=float, default=30.0, help="longest segment in seconds")


def _segmenter_settings(args: argparse.Namespace):
    from edge_runtime.audio.segmenter import SegmenterSettings

    s = SegmenterSettings(threshold=args.threshold, min_silence_ms=args.min_silence_ms,
                          max_segment_s=args.max_segment,
                          pad_ms=min(200, args.min_silence_ms))
    s.validate()
    return s


def _load_text_model(args: argparse.Namespace):
    from edge_runtime.model import load_model
    from edge_runtime.rpc.cli import rpc_settings

    from edge_runtime.lora.adapters import parse_lora_arg

    overrides = {"n_threads": args.threads} if args.threads else {}
    lora = tuple(parse_lora_arg(x) for x in getattr(args, "lora", []))
    return load_model(args.text_model, rpc=rpc_settings(args), lora=lora, **overrides)


def _check_inputs(args: argparse.Namespace) -> None:
    """Report a missing or unreadable audio file or text model before any model is loaded."""
    from edge_runtime.audio.audio import stream_file

    _, blocks = stream_file(args.file)
    blocks.close()
    if args.translate_to and args.text_model:
        from edge_runtime.gguf_file import read_header

        read_header(args.text_model)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from edge_runtime.audio.transcribe import TranscribeSettings, transcribe

    _check_inputs(args)
    engine = _make_engine(args)
    settings = TranscribeSettings(language=args.language, task=args.task, segmenter=_segmenter_settings(args))
    try:
        result = transcribe(args.file, engine, settings=settings)
    finally:
        engine.close()
    if args.translate_to and result.segments:
        from edge_runtime.audio.translate import CascadeTranslator, TranslateSettings

        t0 = time.perf_counter()
        with _load_text_model(args) as model:
            result = CascadeTranslator(model, TranslateSettings(args.translate_to)).translate_result(result)
        result.metrics["translate_seconds"] = round(time.perf_counter() - t0, 3)
    if args.format == "json":
        print(result.to_json(indent=2))
    elif args.format == "srt":
        sys.stdout.write(result.to_srt())
    else:
        for s in result.segments:
            print(s.text)
            if s.translation is not None:
                print(f"  -> {s.translation}")
    if result.translation_error:
        print(f"edge-runtime: error: {result.translation_error} (the transcript above is kept)", file=sys.stderr)
        return 1
    return 0


def _open_source(args: argparse.Namespace):
    from edge_runtime.audio.microphone import FileReplaySource, SoundDeviceSource

    if args.replay:
        return FileReplaySource(args.replay)
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    return SoundDeviceSource(device, sample_rate=args.device_rate)


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("audio input")
    g.add_argument("--device", help="input device index or name (default: the system default)")
    g.add_argument("--device-rate", type=int, help="open the device at this rate (default: its native rate)")
    g.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    g.add_argument("--replay", metavar="FILE", help="play FILE in real time instead of a microphone")
    g.add_argument("--push-to-talk", action="store_true",
                   help="Enter starts an utterance and Enter ends it, instead of voice activity detection")


def _list_devices() -> int:
    from edge_runtime.audio.microphone import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no input devices (PortAudio reports none): plug in a microphone, or use --replay FILE",
              file=sys.stderr)
        return 0
    for d in devices:
        mark = "*" if d.is_default else " "
        print(f"{mark} {d.index:3d}  {d.name}  ({d.channels} ch, {d.default_samplerate} Hz)")
    return 0


def _live(args: argparse.Namespace, engine, source):
    from edge_runtime.audio.live import LiveSettings, LiveTranscriber
    from edge_runtime.audio.microphone import Microphone

    settings = LiveSettings(language=args.language, task=args.task,
                            partial_interval=getattr(args, "partial_interval", 0.0),
                            segmenter=_segmenter_settings(args))
    mic = Microphone(source)
    if args.push_to_talk:
        from edge_runtime.audio.push_to_talk import PushToTalkTranscriber, TalkButton

        button = TalkButton()
        sys.stderr.write("[push to talk: Enter to start speaking, Enter again to stop]\n")
        threading.Thread(target=_enter_toggles, args=(button,), name="push-to-talk", daemon=True).start()
        return mic, PushToTalkTranscriber(mic, engine, button, settings)
    return mic, LiveTranscriber(mic, engine, settings)


def _enter_toggles(button) -> None:
    """Each line on stdin (Enter) presses or releases the talk key; end of input closes it."""
    for _line in sys.stdin:
        sys.stderr.write("[recording; Enter to stop]\n" if button.toggle() else "[stopped]\n")
    button.close()


def _report_input(mic, live, n_final: int) -> None:
    lat = live.latencies
    summary = f"[{n_final} utterance(s)"
    if lat:
        summary += f", end of speech (or key release) to text: mean {sum(lat) / len(lat):.2f} s, max {max(lat):.2f} s"
    summary += f"; overflows {mic.overflows}, dropped blocks {mic.dropped_blocks}]"
    print(summary, file=sys.stderr)


def cmd_listen(args: argparse.Namespace) -> int:
    if args.list_devices:
        return _list_devices()
    source = _open_source(args)
    engine = _make_engine(args)  # before _live: may turn --translate-to into the engine's own task
    translator, model = None, None
    try:
        if args.translate_to:
            from edge_runtime.audio.translate import CascadeTranslator, TranslateSettings, TranslationError

            model = _load_text_model(args)
            translator = CascadeTranslator(model, TranslateSettings(args.translate_to))
        mic, live = _live(args, engine, source)
        n_final = 0
        print(f"[listening: {source.name}, {source.sample_rate} Hz -> 16 kHz; Ctrl-C to stop]", file=sys.stderr)
        try:
            with mic:
                for event in live.run():
                    n_final += event.kind == "final"
                    if event.kind == "partial":
                        if sys.stdout.isatty():
                            print(f"\r\x1b[2K… {event.text}", end="", flush=True)
                        else:
                            print(f"partial {event.start:7.2f} {event.text}", flush=True)
                        continue
                    prefix = "\r\x1b[2K" if sys.stdout.isatty() else ""
                    latency = f" ({event.latency:.2f} s)" if event.latency is not None else ""
                    print(f"{prefix}[{event.start:7.2f} - {event.end:7.2f}]{latency} {event.text}", flush=True)
                    if translator:
                        try:
                            print(f"  -> {translator.translate(event.text)}", flush=True)
                        except TranslationError as exc:
                            print(f"edge-runtime: warning: {exc}; translation turned off", file=sys.stderr)
                            translator = None
        except KeyboardInterrupt:
            pass
        _report_input(mic, live, n_final)
    finally:
        engine.close()
        if model is not None:
            model.close()
    return 0


def cmd_assistant(args: argparse.Namespace) -> int:
    if args.list_devices:
        return _list_devices()
    from edge_runtime.chat import ChatSession
    from edge_runtime.generate import GenerationSettings

    source = _open_source(args)
    engine = _make_engine(args)
    model = None
    try:
        model = _load_text_model(args)
        chat = ChatSession(model, args.system,
                           settings=GenerationSettings(max_tokens=args.max_tokens, temperature=args.temperature))
        mic, live = _live(args, engine, source)
        n_final = 0
        print(f"[assistant listening: {source.name}; Ctrl-C to stop]", file=sys.stderr)
        try:
            with mic:
                for event in live.run():
                    if event.kind != "final":
                        continue
                    n_final += 1
                    print(f"you: {event.text}", flush=True)
                    print("gemma: ", end="", flush=True)
                    with chat.send(event.text) as reply:
                        for piece in reply:
                            print(piece, end="", flush=True)
                    print(flush=True)
        except KeyboardInterrupt:
            pass
        _report_input(mic, live, n_final)
    finally:
        engine.close()
        if model is not None:
            model.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("transcribe", help="speech in an audio file to text (VAD + speech engine)")
    p.add_argument("file", metavar="FILE", help="WAV, FLAC, OGG or MP3")
    p.add_argument("--format", default="txt", choices=["txt", "srt", "json"])
    _engine_args(p)
    _segmenter_args(p, min_silence_ms=700)
    p.set_defaults(func=cmd_transcribe)

    p = subparsers.add_parser("listen", help="live speech recognition from a microphone")
    _source_args(p)
    _engine_args(p)
    _segmenter_args(p, min_silence_ms=500)
    p.add_argument("--partial-interval", type=float, default=1.0,
                   help="seconds of new speech between partial results (0: finals only)")
    p.set_defaults(func=cmd_listen)

    p = subparsers.add_parser("assistant", help="talk to Gemma: speech in, the reply streamed out")
    _source_args(p)
    _engine_args(p)
    _segmenter_args(p, min_silence_ms=700)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a GGUF LoRA adapter for the text model (edge-runtime convert-lora; repeatable)")
    add_rpc_options(p)
    p.set_defaults(func=cmd_assistant)
