"""The server's subcommands of `slipstream` (serve, export, models), and the settings flags they and
`slipstream triton` share; slipstream/cli.py puts them beside the client's and eval's."""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

from server.settings import Settings


def add_settings_flags(parser: argparse.ArgumentParser, only: typing.Iterable[str] | None = None) -> None:
    """One flag per Settings field (or per field named in `only`), so the CLI and the settings never
    drift apart. Flags default to unset, so that only what is given overrides the SLIPSTREAM_* environment."""
    for name, field in Settings.model_fields.items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        kind = typing.get_origin(field.annotation) or field.annotation
        help_text = field.description
        if kind is list:
            parser.add_argument(flag, dest=name, action="append", default=None, help=f"{help_text} (repeatable)")
        elif field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is typing.Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(field.annotation), default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=name, type=typing.cast(typing.Callable[[str], typing.Any], field.annotation), default=None, help=help_text
            )


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.logs import configure_logging
    from server.models import catalog, store
    from server.models.export import ExportError
    from server.models.export_gguf import export_bundled

    settings = settings_from(args)
    configure_logging(settings.log_level)
    settings = settings.model_copy(update={"model_repository": settings.model_repository.resolve()})
    logging.getLogger("slipstream.serve").info("model repository: %s", settings.model_repository)
    for name in settings.model:
        try:
            store.read_manifest(settings.model_repository, name)
        except store.ModelNotExported as missing:
            if not (settings.export_missing and name in catalog.CATALOG):
                raise SystemExit(f"error: {missing}") from None
            # on stderr: stdout is the access log's, JSON lines only
            print(f"{missing}: exporting it now (about a minute)", file=sys.stderr, flush=True)
            try:
                export_bundled(name, settings.model_repository, log=lambda line: print(line, file=sys.stderr, flush=True))
            except ExportError as exc:
                raise SystemExit(f"error: {exc}") from exc
    from server.auth import AuthConfigError

    if settings.ray:
        from server.rayserve.launch import NoCluster, NotDeployed, serve_on_ray

        try:
            return serve_on_ray(settings)
        except (NoCluster, NotDeployed, AuthConfigError) as exc:
            raise SystemExit(f"error: {exc}") from None
    try:
        app = create_app(settings)
    except AuthConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    from server.drain import DrainingServer

    # access_log off: ours says more. The grace is a float of seconds, which uvicorn waits as is (its annotation says int)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]  # a float, waited as is
    )
    DrainingServer(config, app.state.slipstream.drain).run()
    return 0


def _export(args: argparse.Namespace) -> int:
    from server.models import catalog
    from server.models.export import ExportError, download_preset, export_checkpoint
    from server.models.export_gguf import export_bundled

    repository = args.model_repository or Settings().model_repository
    try:
        preset = catalog.PRESETS.get(args.model) if args.model else None
        if args.from_gguf or args.from_ollama:
            _export_gguf(args, repository)
        elif args.from_hf or preset:
            if args.from_hf:
                source = Path(args.from_hf)
            else:
                assert preset is not None  # the branch's other way in
                source = download_preset(preset)
            export_checkpoint(source, repository, args.name, precision=args.precision, preset=preset, force=args.force)
        elif args.model:
            export_bundled(args.model, repository, precision=args.precision, name=args.name, force=args.force)
        else:
            raise ExportError(
                "name a bundled model (gemma3-270m, smollm2-135m) or a preset, or give --from-hf DIR, "
                "--from-gguf FILE or --from-ollama NAME[:TAG]"
            )
    except (ExportError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _export_gguf(args: argparse.Namespace, repository: Path) -> None:
    """NAME --from-gguf FILE, or NAME --from-ollama MODEL[:TAG]: NAME (or --name) is the store name, else
    one made from the file's or the Ollama model's name."""
    from server.models import ollama_store
    from server.models.export_gguf import export_gguf

    name = args.name or args.model
    if args.from_ollama:
        gguf_path = ollama_store.find_gguf(args.from_ollama)
        name = name or ollama_store.store_name(args.from_ollama)
        source = f"ollama:{args.from_ollama} ({gguf_path})"
    else:
        gguf_path, source = Path(args.from_gguf), None
    export_gguf(gguf_path, repository, name, precision=args.precision, force=args.force, source=source)


def _models(args: argparse.Namespace) -> int:
    from server.models import catalog, store

    repository = args.model_repository or Settings().model_repository
    exported = {m.name: m for m in store.exported_models(repository)}
    print(f"exported in {repository}:")
    for name, m in exported.items():
        size = store.size_on_disk(store.model_dir(repository, name)) / 1e6
        print(
            f"  {name:<20} {m.architecture:<12} {m.parameters / 1e6:7.1f}M params  {m.precision:<5} {size:6.0f} MB  ctx {m.context_length}"
        )
        print(f"  {'':<20} from {m.source}" + (f"  sha256 {m.source_sha256}" if m.source_sha256 else ""))
    if not exported:
        print("  (none)")
    print("bundled (slipstream export NAME):")
    for entry in catalog.CATALOG.values():
        mark = "exported" if entry.name in exported else "not exported"
        print(f"  {entry.name:<16} {mark:<13} {entry.description}")
    print("presets (slipstream export NAME --from-hf DIR, or from the hub where reachable):")
    for preset in catalog.PRESETS.values():
        mark = "exported" if preset.name in exported else ""
        fim = "FIM" if preset.fim else ""
        print(f"  {preset.name:<22} {preset.architecture:<11} {fim:<4} {preset.hf_id:<36} {mark}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from server.models.store import ModelNotExported
    from server.verify import verify

    repository = args.model_repository or Settings().model_repository
    try:
        report = verify(repository, args.name, args.reference)
    except (ModelNotExported, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


def add_server_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve completions over HTTP (exports the model first if needed)")
    add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    export = commands.add_parser("export", help="build a model into the model repository")
    export.add_argument(
        "model",
        nargs="?",
        help="a bundled model (gemma3-270m, smollm2-135m) or a catalog preset "
        "(codegen-350m-mono, starcoder2-3b, ...: see `slipstream models`); with --from-gguf or "
        "--from-ollama, the name to store it under",
    )
    sources = export.add_mutually_exclusive_group()
    sources.add_argument("--from-hf", metavar="DIR", help="a local Hugging Face causal-LM checkpoint folder")
    sources.add_argument(
        "--from-gguf",
        metavar="FILE",
        help="a GGUF file (llama.cpp's, LM Studio's, ...): llama, qwen2, "
        "qwen3, phi3, starcoder2, gemma, gemma2 or gemma3; NAME is then the store name",
    )
    sources.add_argument(
        "--from-ollama", metavar="NAME[:TAG]", help="a model Ollama pulled, found in its store ($OLLAMA_MODELS or ~/.ollama/models)"
    )
    export.add_argument(
        "--name",
        help="store name (default: the model's, or the folder's for --from-hf; "
        "-fp32 / -int4 / -fp16 appended for those precisions of a bundled model)",
    )
    export.add_argument(
        "--precision",
        choices=["fp32", "int8", "int4", "fp16", "gguf"],
        default="int8",
        help="int8 (default): 8-bit MatMuls; int4: 4-bit (fused graphs only); fp32: unquantised; "
        "fp16: the CUDA graph (fused graphs only); gguf: a GGUF source's own quantised blocks",
    )
    export.add_argument("--force", action="store_true", help="export again even if already exported")
    export.add_argument("--model-repository", type=Path, default=None)
    export.set_defaults(run=_export)

    models = commands.add_parser("models", help="list exported and bundled models; `models verify NAME` checks one")
    models.add_argument("--model-repository", type=Path, default=None)
    models.set_defaults(run=_models)
    checks = models.add_subparsers(dest="models_command")
    verify = checks.add_parser("verify", help="check an export against its source checkpoint (transformers, fp32)")
    verify.add_argument("name")
    verify.add_argument(
        "--reference", type=Path, default=None, help="the source checkpoint folder or GGUF file, when the manifest's is not on this machine"
    )
    verify.add_argument("--model-repository", type=Path, default=None)
    verify.set_defaults(run=_verify)
