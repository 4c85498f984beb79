"""`edge-runtime generate | chat | serve | info`: thin commands over the runtime library."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edge_runtime.errors import InvalidArgumentError
if TYPE_CHECKING:
    from edge_runtime.generate import GenerationSettings, Stream
from edge_runtime.rpc.cli import add_rpc_options, rpc_settings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model."""
    g = parser.add_argument_group("model and machine")
    g.add_argument("-m", "--model", help="GGUF file (default: the embedded Gemma 3 270M)")
    g.add_argument("-c", "--ctx", type=int, help="context window in tokens (default: 4096 or the model's limit)")
    g.add_argument("-t", "--threads", type=int, help="generation threads (default: performance cores)")
    g.add_argument("--batch", type=int, help="prompt batch size (default 512)")
    g.add_argument("--ubatch", type=int, help="micro-batch size (default 512)")
    g.add_argument("--kv-cache-type", default="f16", choices=["f16", "q8_0"], help="KV cache precision")
    fa = g.add_mutually_exclusive_group()
    fa.add_argument("--flash-attn", dest="flash_attn", action="store_true", default=None)
    fa.add_argument("--no-flash-attn", dest="flash_attn", action="store_false")
    g.add_argument("--mlock", action="store_true", help="lock the weights in RAM")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="apply a GGUF LoRA adapter (edge-runtime convert-lora), SCALE times its alpha/r (default 1; "
                        "repeatable)")
    g.add_argument("--no-repack", action="store_true",
                   help="keep quantized weights as stored instead of repacking them for this CPU's faster kernels "
                        "(slower; with --no-flash-attn, greedy replies no longer depend on what else is batched)")
    g.add_argument("--no-mmap", action="store_true", help="read the weights instead of memory-mapping them")
    add_rpc_options(parser)


def add_media_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mmproj", action="append", default=[], metavar="FILE",
                        help="the model's media encoder: its mmproj GGUF, and for Gemma 3n audio its audio.onnx "
                             "(repeatable: one per file)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--min-p", type=float, default=0.05)
    g.add_argument("--repeat-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, help="random seed (default: random)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable; not printed)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def runtime_settings(args: argparse.Namespace):
    from edge_runtime.lora.adapters import parse_lora_arg
    from edge_runtime.settings import RuntimeSettings

    return RuntimeSettings(
        n_ctx=args.ctx,
        n_threads=args.threads,
        n_batch=args.batch,
        n_ubatch=args.ubatch,
        kv_cache_type=args.kv_cache_type,
        flash_attn=args.flash_attn,
        use_mlock=args.mlock,
        use_mmap=not args.no_mmap,
        rpc=rpc_settings(args),
        parallel=getattr(args, "parallel", 1),
        repack=not args.no_repack,
        lora=tuple(parse_lora_arg(x) for x in args.lora),
    )


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """Sampling options -> settings, with errors that name the options (not the library's fields)."""
    from edge_runtime.generate import GenerationSettings

    if args.max_tokens < 1:
        raise InvalidArgumentError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    settings = GenerationSettings(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    try:
        settings.validate()
    except InvalidArgumentError as exc:
        field = str(exc).split()[0]
        raise InvalidArgumentError(str(exc).replace(field, "--" + field.replace("_", "-"), 1)) from None
    return settings


@contextlib.contextmanager
def cancel_on_sigint(stream: Stream) -> Iterator[None]:
    """Ctrl-C cancels the reply in flight instead of ending the program."""
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: stream.cancel())
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_stream(stream: Stream, quiet: bool) -> None:
    with cancel_on_sigint(stream):
        for piece in stream:
            if not quiet:
                sys.stdout.write(piece)
                sys.stdout.flush()


def cmd_generate(args: argparse.Namespace) -> int:
    from edge_runtime.model import load_model

    from edge_runtime.media import Audio, Image, split_marked

    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    media = [Image(p) for p in args.image] + [Audio(p) for p in args.audio]
    settings = generation_settings(args)
    with load_model(args.model, runtime_settings(args), mmproj=args.mmproj) as model:
        stream = model.stream(split_marked(prompt, media) if media else prompt, settings)
        _print_stream(stream, quiet=args.json)
        result = stream.result
        assert result is not None
        if args.json:
            print(json.dumps({**result.as_dict(), "tokens": result.tokens}, ensure_ascii=False))
        else:
            print()
            if args.verbose:
                print(json.dumps(result.metrics.as_dict()), file=sys.stderr)
    return 130 if result.finish_reason == "cancelled" else 0


CHAT_HELP = """commands:
  /image PATH    attach an image to your next message (needs --mmproj)
  /audio PATH    attach a clip to your next message (needs --mmproj)
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt and start over
  /help          this list
  /quit          leave (also Ctrl-D)
  //text         send a message that starts with /"""


def cmd_chat(args: argparse.Namespace) -> int:
    from edge_runtime.chat import ChatSession
    from edge_runtime.model import load_model

    from edge_runtime.errors import EdgeRuntimeError
    from edge_runtime.media import Audio, Image

    interactive = sys.stdin.isatty() and not args.json
    pending: list = [Image(p) for p in args.image] + [Audio(p) for p in args.audio]  # for the next message
    with load_model(args.model, runtime_settings(args), mmproj=args.mmproj) as model:
        session = ChatSession(model, args.system, settings=generation_settings(args))
        if interactive:
            print(f"{model.info.name} ({model.n_ctx}-token window). /help for commands; Ctrl-C stops a reply.",
                  file=sys.stderr)
        while True:
            if interactive:
                try:
                    line = input("> ")
                except (EOFError, KeyboardInterrupt):
                    print(file=sys.stderr)
                    return 0
            else:
                line = sys.stdin.readline()
                if not line:
                    return 0
                line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.strip() in ("/quit", "/exit"):
                return 0
            if line.strip() == "/reset":
                session.reset()
                if interactive:
                    print("(conversation cleared)", file=sys.stderr)
                continue
            if line.startswith("/system"):
                session.set_system(line[len("/system") :].strip())
                session.reset()
                if interactive:
                    print("(system prompt set; conversation cleared)", file=sys.stderr)
                continue
            if line.strip() == "/help":
                print(CHAT_HELP, file=sys.stderr)
                continue
            command = line.split(maxsplit=1)
            if command[0] in ("/image", "/audio"):
                path = command[1].strip() if len(command) > 1 else ""
                if not path:
                    print(f"usage: {command[0]} PATH", file=sys.stderr)
                elif not os.path.isfile(path):
                    print(f"no such file: {path}", file=sys.stderr)
                else:
                    pending.append(Image(path) if command[0] == "/image" else Audio(path))
                    if interactive:
                        print(f"({command[0][1:]} {path} attached to your next message)", file=sys.stderr)
                continue
            if line.startswith("/") and not line.startswith("//"):
                print(f"unknown command {line.split()[0]}; /help lists them (start a message with // to send a "
                      "literal /)", file=sys.stderr)
                continue
            text = line[1:] if line.startswith("//") else line
            try:
                stream = session.send([*pending, text] if pending else text)
            except EdgeRuntimeError as exc:
                if not interactive:
                    raise
                print(f"error: {exc}", file=sys.stderr)  # the conversation goes on without that message
                continue
            finally:
                pending = []
            _print_stream(stream, quiet=args.json)
            result = stream.result
            assert result is not None
            if args.json:
                print(json.dumps({"truncated": False, **result.as_dict()}, ensure_ascii=False), flush=True)
            else:
                print("\n" if result.finish_reason != "cancelled" else " [stopped]\n", flush=True)
                if result.truncated:
                    print("(warning: your message was too long for the window; only its end was kept)", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> int:
    import dataclasses

    from edge_runtime.backend.core import lib_dir, system_info
    from edge_runtime.backend.cpu_build import build_features, build_record
    from edge_runtime.backend.rpc import REBUILD_HINT, rpc_available
    from edge_runtime.hardware import detect_cpu
    from edge_runtime.model import load_model

    cpu = detect_cpu()
    with load_model(args.model, runtime_settings(args)) as model:
        info = dataclasses.asdict(model.info)
        settings = model.settings.as_dict()
        reasons = model.settings.reasons
        chat = model.chat_format.name
        split = model.rpc_split
    cpu_d = dataclasses.asdict(cpu)
    cpu_d.pop("core_capacities", None)
    build = {"features": sorted(build_features(system_info())), "march": build_record(lib_dir()).get("march")}
    report = {"model": info, "settings": settings, "chat_format": chat, "cpu": cpu_d, "llama_cpp": system_info(),
              "llama_cpp_build": build, "rpc_available": rpc_available(), "rpc": split}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("Model")
    for k, v in info.items():
        hint = "  (continues text; chat needs an instruction-tuned Gemma)" if k == "kind" and v == "base" else ""
        print(f"  {k:18} {v}{hint}")
    print(f"  {'chat_format':18} {chat}")
    print("Settings")
    for k, v in settings.items():
        why = f"  ({reasons[k]})" if k in reasons else ""
        print(f"  {k:18} {v}{why}")
    print("CPU")
    print(f"  {'model':18} {cpu.model} ({cpu.machine})")
    print(f"  {'cores':18} {cpu.physical_cores} physical, {cpu.performance_cores} performance, "
          f"{cpu.efficiency_cores} efficiency, {cpu.logical_cpus} logical"
          f"{' (' + ' + '.join(cpu.core_types) + ')' if cpu.core_types else ''}")
    print(f"  {'features':18} {', '.join(cpu.features) or 'none detected'}")
    march = f"-march={build['march']}: " if build["march"] else ""
    print(f"  {'build needs':18} {march}{', '.join(build['features']) or 'baseline only'}")
    if cpu.total_memory_mb:
        print(f"  {'memory':18} {cpu.total_memory_mb} MiB")
    print(f"  {'llama.cpp':18} {system_info()}")
    print(f"  {'rpc':18} {'available' if rpc_available() else 'not in this build (' + REBUILD_HINT + ')'}")
    if split:
        print(f"RPC split ({split['reason']})")
        for w in split["workers"]:
            print(f"  {w['endpoint']:22} {w['layers']:3} layers  {w['mem_mb']} MiB offered"
                  f"{'  key checked' if w['auth'] else ''}{'  (stock llama.cpp rpc-server)' if w['kind'] != 'edge-runtime' else ''}")
        print(f"  {'this CPU':22} {split['local_layers']:3} layers  (output layer: {split['output_layer']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="stream a completion of PROMPT")
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin; <__media__> marks where media go")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image for the prompt (repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="a clip for the prompt (repeatable)")
    add_media_options(p)
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser("chat", help="chat interactively (or one turn per line from a pipe)")
    p.add_argument("--system", help="system prompt (pinned in the window)")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image for the first message (repeatable; later ones: /image PATH)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE",
                   help="a clip for the first message (repeatable; later ones: /audio PATH)")
    add_media_options(p)
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=cmd_chat)

    p = subparsers.add_parser("serve", help="a local OpenAI-compatible server (/v1/chat/completions, ...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests (visible in ps: prefer "
                                    "--api-key-file or $EDGE_RUNTIME_API_KEY)")
    p.add_argument("--api-key-file", metavar="FILE", help="read the API key from the first line of FILE")
    p.add_argument("--keys-file", metavar="FILE",
                   help="several API keys, stored hashed, each with its limits (edge-runtime keys add FILE --id NAME)")
    p.add_argument("--model-id", help="model name reported to clients (default: the GGUF's name)")
    p.add_argument("--parallel", type=_parallel_arg, default=None, metavar="N",
                   help="streams decoded together, each with its own --ctx of KV cache (default auto: "
                        "two per core, fewer when memory is short; `info --parallel auto` shows it)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for the model; more get 429 with Retry-After (default 64)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin allowed to call the API, e.g. http://localhost:3000 (repeatable; default: none)")
    p.add_argument("-n", "--max-tokens", type=int, default=512, help="default and upper bound of max_tokens")
    add_media_options(p)
    p.add_argument("--media-dir", metavar="DIR", help="let image_url name files inside DIR (default: data URLs only)")
    p.add_argument("--asr", default="auto", choices=["auto", "whisper", "gemma", "off"],
                   help="engine of /v1/audio/transcriptions and /translations (default auto: Whisper when "
                        "faster-whisper is installed, else Gemma when --mmproj gives it ears)")
    g = p.add_argument_group("monitoring (GET /metrics, GET /v1/alerts)")
    g.add_argument("--alert-window", type=float, default=300.0, metavar="S", help="alert window (default 300 s)")
    g.add_argument("--alert-ttft", type=float, metavar="S", help="alert when the p95 time to first token is above S")
    g.add_argument("--alert-min-tps", type=float, metavar="N", help="alert when the median tokens/s is below N")
    g.add_argument("--alert-rss-mb", type=float, metavar="MB", help="alert when the process uses more memory")
    g.add_argument("--alert-success", type=float, metavar="RATE",
                   help="alert when fewer requests than RATE (e.g. 0.99) are answered (not 5xx, not 429)")
    g.add_argument("--metrics-json", metavar="FILE", help="write the metrics and alerts to FILE every 15 s")
    p.add_argument("--asr-model", metavar="NAME", help="the Whisper model (name or folder; default tiny.en/auto)")
    add_model_options(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("keys", help="the server's API keys file: add a key (printed once), list them")
    p.add_argument("action", choices=["add", "list"])
    p.add_argument("file", help="the keys file (serve --keys-file)")
    p.add_argument("--id", default="default", help="the key's name in logs and errors")
    p.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    p.add_argument("--tpm", type=int, default=0, help="prompt + generated tokens per minute (0: no limit)")
    p.add_argument("--concurrent", type=int, default=0, help="requests at once (0: no limit)")
    p.set_defaults(func=cmd_keys)

    p = subparsers.add_parser("info", help="model metadata, chosen settings and CPU features")
    p.add_argument("model_path", nargs="?", metavar="MODEL", help="GGUF file (default: the embedded model)")
    p.add_argument("--parallel", type=_parallel_arg, default=1, metavar="N",
                   help="show the settings of a server with N slots (auto: what serve would choose)")
    add_model_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: cmd_info(_merge_model(a)))


def _parallel_arg(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"must be auto or a number of streams from 1 to 256, not {text!r}")
    return int(text)


def cmd_serve(args: argparse.Namespace) -> int:
    from edge_runtime.model import load_model
    try:
        from edge_runtime.server import OpenAIServer, ServerSettings, resolve_api_key
        from edge_runtime.audio.engines import audio_projector
        from edge_runtime.server.alerts import AlertRules
        from edge_runtime.server.keys import load_keys
    except ModuleNotFoundError as exc:
        raise InvalidArgumentError(f"the server needs {exc.name}: pip install 'edge-runtime[server]'") from None

    if args.max_tokens < 1:
        raise InvalidArgumentError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    if args.max_queue < 0:
        raise InvalidArgumentError(f"--max-queue must be 0 or more, not {args.max_queue}")
    media_dir = None
    if args.media_dir:
        media_dir = Path(args.media_dir).resolve()
        if not media_dir.is_dir():
            raise InvalidArgumentError(f"--media-dir {args.media_dir} is not a folder")
    settings = ServerSettings(host=args.host, port=args.port, api_key=resolve_api_key(args.api_key, args.api_key_file),
                              model_id=args.model_id, max_tokens=args.max_tokens, max_queue=args.max_queue,
                              cors_origins=tuple(args.cors_origin), media_dir=media_dir, asr=args.asr,
                              asr_model=args.asr_model, asr_mmproj=audio_projector(args.mmproj),
                              keys=load_keys(args.keys_file) if args.keys_file else None,
                              alert_rules=AlertRules(args.alert_window, args.alert_ttft, args.alert_min_tps,
                                                     args.alert_rss_mb, args.alert_success),
                              metrics_json=args.metrics_json)
    with load_model(args.model, runtime_settings(args), mmproj=args.mmproj) as model, \
            OpenAIServer(model, settings) as server:
        print(f"[serving {server.model_id} at {server.url}/v1 ({model.parallel} streams at once, n_ctx "
              f"{model.n_ctx} each); Ctrl-C to stop]",
              file=sys.stderr, flush=True)
        model.warn_if_base("the server's /v1/chat/completions")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from edge_runtime.server.keys import add_key, load_keys

    if args.action == "add":
        for name in ("rpm", "tpm", "concurrent"):
            if getattr(args, name) < 0:
                raise InvalidArgumentError(f"--{name} must be 0 (no limit) or more")
        key = add_key(args.file, args.id, rpm=args.rpm, tpm=args.tpm, concurrent=args.concurrent)
        print(key)
        print(f"(key {args.id!r} added to {args.file}, which keeps only its sha256: store the key now, it is not "
              "shown again)", file=sys.stderr)
        return 0
    for k in load_keys(args.file).values():
        print(f"{k.id:20} rpm {k.rpm or '-':>6}  tpm {k.tpm or '-':>8}  concurrent {k.concurrent or '-':>3}")
    return 0


def _merge_model(args: argparse.Namespace) -> argparse.Namespace:
    if args.model_path:
        args.model = args.model_path
    return args
