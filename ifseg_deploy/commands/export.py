"""``ifseg-deploy export``: adapted model -> checked ONNX (fp32 / INT8 Q/DQ) or TensorRT engine."""

from __future__ import annotations

import click

from ..evaluation.registry import DATASETS
from ..runtime.registry import PRECISIONS
from .options import device_option, parse_size

FORMATS = ("onnx", "tensorrt")


@click.command(short_help="Export an adapted model to ONNX (fp32, INT8) or a TensorRT engine, checked.")
@click.option("--model", "model", required=True, type=click.Path(exists=True),
              help="Adapted-model directory (from `adapt`), or an exported .onnx file (to quantize it or build "
                   "its engine on the device).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="onnx", show_default=True,
              help="onnx: a self-describing .onnx file; tensorrt: an engine for this machine's GPU (+ .json).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="onnx: fp32, fp16 (weights fp16, LayerNorm/Softmax/refinement fp32: TensorRT builds it strongly "
                   "typed), int8 (Q/DQ, calibrated: the format TensorRT runs) or int8-dynamic (ONNX Runtime's "
                   "CPU INT8: int8 weights, no calibration); tensorrt: fp32, fp16 or int8. [default: fp32 for "
                   "onnx, fp16 for tensorrt]")
@click.option("--calib-images", type=click.Path(exists=True, file_okay=False),
              help="INT8: folder of unlabeled, representative photos (hundreds; modelopt advises >= 500).")
@click.option("--calib-method", type=click.Choice(["entropy", "max"]), default="entropy", show_default=True,
              help="INT8 calibration of activation ranges.")
@click.option("--calib-max", type=click.IntRange(min=1), default=500, show_default=True,
              help="Use at most this many calibration images (spread over the folder).")
@click.option("--calib-min", type=click.IntRange(min=1), default=4, show_default=True,
              help="Fail (writing nothing) when fewer readable calibration images remain; unreadable files "
                   "are skipped with a warning.")
@click.option("--input-size", callback=parse_size, metavar="HxW",
              help="Fixed input size, e.g. 512x683 (a 640x480 camera after the runtime's resize). [default]")
@click.option("--dynamic", is_flag=True,
              help="Dynamic height and width (TensorRT profile from --min/--opt/--max-size).")
@click.option("--min-size", callback=parse_size, metavar="HxW", help="With --dynamic. [default: 256x256]")
@click.option("--opt-size", callback=parse_size, metavar="HxW", help="With --dynamic. [default: 512x683]")
@click.option("--max-size", callback=parse_size, metavar="HxW", help="With --dynamic. [default: 1024x1024]")
@click.option("--max-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Largest batch the model (and the engine's profile) accepts.")
@click.option("--no-refine", is_flag=True, help="Leave the kNN refinement (K=3, 25 iterations) out of the graph.")
@click.option("--labels", is_flag=True,
              help="Add a second output: labels at the input size (bilinear upsampling + argmax in the graph).")
@click.option("--open-vocabulary", is_flag=True,
              help="A graph that takes the vocabulary as input (prompt ids, padded name ids, lengths): the file "
                   "segments any names given at run time (--categories, set_categories) without a new export or "
                   "engine. Needs a model adapted with `--vocabulary`; fp32 ONNX or a TensorRT engine.")
@click.option("--max-names", type=click.IntRange(min=1), metavar="M",
              help="With --open-vocabulary: most category names at once. [default: 32]")
@click.option("--max-name-tokens", type=click.IntRange(min=1), metavar="T",
              help="With --open-vocabulary: most tokens per name. [default: 8]")
@click.option("--max-prompt-tokens", type=click.IntRange(min=2), metavar="LT",
              help="With --open-vocabulary: most prompt tokens (prompt, names, 'unknown'). [default: 256, or the "
                   "encoder's text positions if fewer]")
@click.option("--opset", type=click.IntRange(min=17), default=18, show_default=True, help="ONNX opset (>= 17).")
@click.option("--agreement-threshold", type=click.FloatRange(0, 1), default=0.999, show_default=True,
              help="fp32: minimum label agreement with PyTorch (grid cells); below it the export fails.")
@click.option("--reduced-agreement-threshold", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="INT8: minimum label agreement with the fp32 model.")
@click.option("--fp16-agreement-threshold", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="fp16: minimum label agreement of the FP16 ONNX with the fp32 one (and of an fp16 engine "
                   "with its FP16 ONNX).")
@click.option("--max-miou-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="INT8 with --eval-dataset: largest allowed mIoU loss (0.01 = 1 point).")
@click.option("--eval-dataset", type=click.Choice(list(DATASETS)),
              help="INT8: a labelled set to compare the mIoU of INT8 and fp32 on (see `ifseg-deploy eval`); an "
                   "undefined mIoU (no labelled pixel of the model's classes) fails the check.")
@click.option("--eval-root", type=click.Path(exists=True, file_okay=False),
              help="Root folder of --eval-dataset (not needed for the generated synthetic set).")
@click.option("--eval-limit", type=click.IntRange(min=1), help="Use only the first N images of --eval-dataset.")
@click.option("--workspace", type=click.IntRange(min=16), default=1024, show_default=True, metavar="MiB",
              help="TensorRT builder workspace cap (Jetsons share their memory with the CPU).")
@click.option("--engine-cache", type=click.Path(file_okay=False),
              help="TensorRT engine cache folder. [default: $IFSEG_DEPLOY_CACHE or ~/.cache/ifseg-deploy/engines]")
@device_option(None, "TensorRT: cuda or cuda:N. [default: cuda:0]")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .onnx or .engine file.")
def export(model: str, fmt: str, precision: str | None, calib_images: str | None, calib_method: str,
           calib_max: int, calib_min: int, input_size: tuple[int, int] | None, dynamic: bool,
           min_size: tuple[int, int] | None, opt_size: tuple[int, int] | None, max_size: tuple[int, int] | None,
           max_batch: int, no_refine: bool, open_vocabulary: bool, max_names: int | None,
           max_name_tokens: int | None, max_prompt_tokens: int | None, labels: bool, opset: int,
           agreement_threshold: float, reduced_agreement_threshold: float, fp16_agreement_threshold: float,
           max_miou_drop: float, eval_dataset: str | None, eval_root: str | None, eval_limit: int | None,
           workspace: int, engine_cache: str | None, device: str | None, overwrite: bool, out: str) -> None:
    """Export MODEL to a checked, self-describing file for the edge device.

    \b
      ifseg-deploy export --model my_model --out my_model.onnx
      ifseg-deploy export --model my_model --dynamic --max-batch 4 --out my_model.dyn.onnx
      ifseg-deploy export --model my_model.onnx --precision int8 --calib-images photos/ --out my_model.int8.onnx
      ifseg-deploy export --model my_model.onnx --precision fp16 --out my_model.fp16.onnx
      ifseg-deploy export --model my_model.onnx --format tensorrt --precision fp16 --out my_model.engine
      ifseg-deploy export --model open_model --open-vocabulary --max-names 16 --out open_model.onnx

    Every export is checked before it is written: ONNX Runtime against PyTorch (fp32: at least 99.9% of the
    labels agree, or the export fails and nothing is written), fp16 and INT8 against fp32 (label agreement,
    and for INT8 the mIoU difference on --eval-dataset), a TensorRT engine against its ONNX file. The .onnx file
    holds the category names, preprocessing and refinement settings, so it is all a device needs.
    """
    from ifseg_deploy.checkpoints.errors import CheckpointError
    from ifseg_deploy.evaluation.datasets import DatasetError
    from ifseg_deploy.evaluation.evaluate import ClassMismatchError
    from ifseg_deploy.export.fp16 import Fp16Error, Fp16MissingError
    from ifseg_deploy.export.inputs import CalibrationError
    from ifseg_deploy.export.int8 import QuantizationError
    from ifseg_deploy.export.onnx_export import ExportError
    from ifseg_deploy.export.parity import ParityError
    from ifseg_deploy.export.pipeline import ExportUsageError, export_model
    from ifseg_deploy.export.trt_build import EngineBuildError, TensorRTUnavailableError
    from ifseg_deploy.runtime.engine_file import EngineFileError
    from ifseg_deploy.runtime.input_spec import DEFAULT_MAX, DEFAULT_MIN, DEFAULT_OPT, InputSpec, SpecError
    from ifseg_deploy.runtime.model_info import MetadataError

    if input_size is not None and (dynamic or min_size or opt_size or max_size):
        raise click.UsageError("give either --input-size or --dynamic (with --min/--opt/--max-size), not both")
    if (min_size or opt_size or max_size) and not dynamic:
        raise click.UsageError("--min-size/--opt-size/--max-size go with --dynamic")
    if not dynamic and input_size is None:
        spec = None if max_batch == 1 else InputSpec.fixed((512, 683), max_batch)
    elif dynamic:
        spec = InputSpec.dynamic(min_size or DEFAULT_MIN, opt_size or DEFAULT_OPT, max_size or DEFAULT_MAX, max_batch)
    else:
        spec = InputSpec.fixed(input_size, max_batch)  # type: ignore[arg-type]
    if eval_dataset and not eval_root:
        from ifseg_deploy.evaluation.registry import get_dataset

        try:  # only generated sets (synthetic) work without a root
            get_dataset(eval_dataset, None)
        except DatasetError:
            raise click.UsageError(f"--eval-dataset {eval_dataset} needs --eval-root") from None
    try:
        summary = export_model(
            model, out, format=fmt, precision=precision, input_spec=spec, refine=not no_refine, labels=labels,
            opset=opset, calib_images=calib_images, calib_method=calib_method, calib_max=calib_max, calib_min=calib_min,
            agreement_threshold=agreement_threshold, reduced_agreement_threshold=reduced_agreement_threshold,
            fp16_agreement_threshold=fp16_agreement_threshold,
            max_miou_drop=max_miou_drop, eval_dataset=eval_dataset, eval_root=eval_root, eval_limit=eval_limit,
            workspace_bytes=workspace * 2**20, engine_cache=engine_cache, device=device, overwrite=overwrite,
            open_vocabulary=open_vocabulary, max_names=max_names, max_name_tokens=max_name_tokens,
            max_prompt_tokens=max_prompt_tokens, echo=click.echo)
    except ParityError as e:
        raise click.ClickException(f"export failed its parity check; nothing was written to {out}\n{e}") from None
    except (ExportUsageError, SpecError) as e:
        raise click.UsageError(str(e)) from None
    except (ExportError, QuantizationError, MetadataError, CheckpointError, EngineBuildError, EngineFileError,
            TensorRTUnavailableError, CalibrationError, Fp16Error, Fp16MissingError, DatasetError,
            ClassMismatchError, FileExistsError, FileNotFoundError) as e:
        raise click.ClickException(f"{e}\nnothing was written to {out}") from None
    vocabulary = summary.info.vocabulary
    click.echo(f"done: {summary.path} ({summary.format}, {summary.precision}, {summary.info.input.describe()}"
               + (f"; open vocabulary: {vocabulary.describe()}" if vocabulary is not None else "") + ")")
