"""`pipeline corpus` and `pipeline demo-corpus`: thin commands over stages/corpus.

`corpus` decodes every image of a SOURCE once and writes manifest.parquet with fixed views (the stored
views of offline distillation, AM-RADIO arXiv 2312.06709); `demo-corpus` exports the embedded demo images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.defaults import ParamsOpt, Route, routed
from pipeline.errors import fail, os_error_message

CORPUS = Route(sections=("corpus",), keys={"out": "store.root", "ray_timeout": "extract.ray_timeout"},
               required=("source", "out"))
DEMO_CORPUS = Route(keys={"out_dir": "demo.dir"}, required=("out_dir",))


def corpus(
    source: Annotated[Optional[str], typer.Argument(help="Folder of images and/or WebDataset .tar shards (searched "
                                                         "recursively), shards as a glob ('shards/*.tar') or brace "
                                                         "pattern ('shards/{00000..00123}.tar'), one .tar, a text "
                                                         "file of paths (one per line), or a .parquet file with a "
                                                         "'uri' column; local or any fsspec URL (s3://bucket/...). "
                                                         "Default: corpus.source of params.yaml.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Store root (a folder or an fsspec URL such as "
                                                             "s3://bucket/prefix); manifest.parquet is written here. "
                                                             "Default: store.root of params.yaml.")] = None,
    views: Annotated[Optional[int], typer.Option(help="Views per image (view 0 is the full image, unflipped).")] = None,
    view_seed: Annotated[Optional[int], typer.Option(help="Seed of the view draw (with each image's sha256).")] = None,
    pixel_limit: Annotated[Optional[int], typer.Option(help="Images with more pixels than this (checked from the "
                                                            "header, before decoding) are recorded as bad.")] = None,
    min_side: Annotated[Optional[int], typer.Option(help="Images with a side shorter than this many pixels are "
                                                         "recorded as bad.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Fraction of images (by content hash) in the val "
                                                               "split.")] = None,
    files_per_task: Annotated[Optional[int], typer.Option(help="Image files per task (each tar shard is one "
                                                                "task).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray tasks at once (one CPU each). Default: every CPU of "
                                                        "the Ray cluster.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster ('auto' or host:port); default "
                                                            "starts a local Ray.")] = None,
    ray_timeout: Annotated[Optional[float], typer.Option(help="Seconds the cluster at --ray-address has to answer. "
                                                              "Default: extract.ray_timeout.")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Build every unit in this process without Ray (same "
                                                          "code path).")] = False,
    layout: Annotated[str, typer.Option("--layout", help="files (any images; splits by content hash), or an "
                                                         "evaluation dataset in its released layout: imagefolder "
                                                         "(train|val/<class>/*), ade20k (images|annotations/"
                                                         "training|validation), voc (JPEGImages, SegmentationClass, "
                                                         "ImageSets/Segmentation), depth ({train,val}/rgb|depth, "
                                                         "depth_meta.json). Labels, annotation paths, class names "
                                                         "and splits go into the manifest (docs/EVALUATION.md).")] = "files",
    params: ParamsOpt = None,
) -> None:
    """Decode every image of SOURCE once and write OUT/manifest.parquet (ids, hashes, splits, views).

    One Ray task per tar shard or batch of files, each writing a part under OUT/corpus_parts: a killed build
    re-run with the same options resumes, reusing the finished parts. Arguments and options not given take
    their values from params.yaml when there is one (printed on stderr), else the corpus stage's defaults
    (stages/corpus/config.py)."""
    from stages.corpus.build_manifest import bad_summary, build_corpus
    from store_schema.location import as_location
    from store_schema.manifest import ViewSpec

    if not no_ray and ray_address is not None:  # a mistyped cluster address: one line, before anything is written
        from stages.orchestrate.ray_address import check_reachable

        check_reachable(ray_address, timeout_s=ray_timeout)
    try:
        report = build_corpus(str(source), out_dir=as_location(out), view_spec=ViewSpec(num_views=views, seed=view_seed),
                              pixel_limit=pixel_limit, min_side=min_side, val_fraction=val_fraction,
                              files_per_task=files_per_task, workers=0 if no_ray else workers,
                              ray_address=ray_address, dataset_layout=layout)
    except OSError as e:  # an unreachable bucket, a permission: one error line (ValueError prints as one too)
        raise fail(os_error_message(e, "`pipeline corpus`") or str(e)) from e
    manifest, parts = report.manifest, report.parts
    typer.echo(f"units: {report.units}  built: {parts.built} ({parts.engine or 'none left'})  reused: {parts.reused}"
               f"  {report.seconds:.1f} s")
    n_ok = int(manifest.ok_N.sum())
    typer.echo(f"images: {manifest.num_images}  ok: {n_ok}  bad: {manifest.num_images - n_ok}")
    if manifest.dataset is not None:
        d = manifest.dataset
        per_split = ", ".join(f"{s} {int((manifest.ok_N & (manifest.split == s)).sum())}" for s in ("train", "val"))
        typer.echo(f"dataset {d.name!r} ({d.layout}): {len(d.classes)} classes; ok images: {per_split}")
    for line in bad_summary(manifest):  # per reason, with the first few files (all of them: the manifest)
        typer.echo(line)
    typer.echo(f"manifest: {manifest.path}  sha256: {manifest.hash}")


def demo_corpus(
    out_dir: Annotated[Optional[Path], typer.Argument(help="Folder to write the demo corpus into (new, empty, or a "
                                                           "previous demo export). Default: demo.dir of "
                                                           "params.yaml.")] = None,
    params: ParamsOpt = None,
) -> None:
    """Export the embedded demo corpus (scikit-image photos + LFW faces / non-faces), no download."""
    from stages.corpus.demo import export_demo_corpus

    demo = export_demo_corpus(out_dir)
    typer.echo(f"photos: {demo.num_photos}  lfw: {demo.num_lfw}  shapes: {demo.num_shapes} (masks in {demo.seg_masks})")
    typer.echo(f"images: {demo.images_dir}  (use as the corpus SOURCE)")
    typer.echo(f"probe labels: {demo.probe_labels}")
    typer.echo(f"evaluation datasets: {demo.bench_dir} (lfw: imagefolder, shapes_ade: ade20k, shapes_depth: depth; "
               "`pipeline corpus <dir> --out ROOT --layout ...`)")


def register(app: typer.Typer) -> None:
    """Add the corpus commands to the pipeline app."""
    app.command("corpus", cls=routed(CORPUS))(corpus)
    app.command("demo-corpus", cls=routed(DEMO_CORPUS))(demo_corpus)
