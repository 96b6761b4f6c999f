"""The adapted-model directory every stage after ``adapt`` loads: ``config.json`` + ``model.safetensors`` +
tokenizer files, written atomically."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import ArtifactError, check_artifact, incomplete_message, size_text
from .atomic import atomic_directory
from .checkpoints.errors import CheckpointError
from .checkpoints.safe_load import load_safetensors
from .errors import InputError
from .modeling.position import max_text_tokens
from .modeling.segofa import SegOFA
from .preprocessing import PreprocessConfig
from .presets import OFAConfig
from .tokenizer import DEFAULT_PROMPT, OFATokenizer, PromptTooLongError, TokenizerError
from .version import __version__

FORMAT_NAME = "ifseg-deploy/adapted-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"



@dataclass
class AdaptedModel:
    """A SegOFA model with its categories, prompt, tokenizer and metadata; what ``save_pretrained`` writes."""

    model: SegOFA
    tokenizer: OFATokenizer
    categories: list[str]
    prompt: str = DEFAULT_PROMPT
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the adaptation run's configuration

    def __post_init__(self) -> None:
        self.preprocessing = PreprocessConfig.from_dict(self.preprocessing)

    @classmethod
    def unadapted_from_ofa(cls, checkpoint: str | Path, categories: Sequence[str], *,
                           bpe_dir: str | Path | None = None, arch: str | None = None, prompt: str = DEFAULT_PROMPT,
                           seed: int = 0) -> AdaptedModel:
        """An OFA checkpoint (fairseq file or Hugging Face directory) set up for ``categories``, *before*
        adaptation: the class table and prompt are those names', the IFSeg parameters OFA lacks are initialised.
        This is what :func:`ifseg_deploy.adapt.adapt` starts from (and what ``inspect --save`` writes)."""
        from .checkpoints.loader import load_ofa

        model, tokenizer, report = load_ofa(checkpoint, categories, bpe_dir=bpe_dir, arch=arch, prompt=prompt,
                                            seed=seed)
        meta = {"source_checkpoint": str(checkpoint), "load_report": report.summary()}
        return cls(model, tokenizer, [c.strip() for c in categories], prompt, metadata=meta)

    @classmethod
    def from_ofa(cls, *args: Any, **kwargs: Any) -> AdaptedModel:
        """Deprecated name of :meth:`unadapted_from_ofa` (it never adapted anything); removed in the next
        release."""
        warnings.warn("AdaptedModel.from_ofa is now AdaptedModel.unadapted_from_ofa", DeprecationWarning,
                      stacklevel=2)
        return cls.unadapted_from_ofa(*args, **kwargs)

    def config_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "architecture": self.model.cfg.to_dict(),
            "categories": self.categories,
            "prompt": self.prompt,
            "preprocessing": self.preprocessing.to_dict(),
            "metadata": self.metadata,
        }

    def save_pretrained(self, out_dir: str | Path, overwrite: bool = False,
                        extra_files: dict[str, bytes] | None = None) -> Path:
        """Write the directory atomically: a kill half-way leaves no directory under ``out_dir``'s name.

        ``extra_files`` (name -> bytes) land in the same directory in the same rename, e.g. a training log.
        """
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_directory(out_dir, overwrite=overwrite) as staging:
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
            self.tokenizer.save(staging)
            for name, data in (extra_files or {}).items():
                (staging / name).write_bytes(data)
            (staging / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", *,
                        categories: Sequence[str] | None = None, prompt: str | None = None) -> AdaptedModel:
        """Load a directory written by :meth:`save_pretrained`; refuses anything else with a clear message.

        ``categories`` (with ``prompt``, default the saved one) re-target the model to other names: the class
        table is rebuilt from them, and a prompt longer than the encoder's text positions raises
        :class:`~ifseg_deploy.tokenizer.PromptTooLongError` before the weights are read.
        """
        try:
            path = check_artifact(path, "model")
        except ArtifactError as e:
            raise CheckpointError(str(e)) from None
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise CheckpointError(f"{path} is not an adapted-model directory (no {CONFIG_FILE}); "
                                  "create one with `ifseg-deploy adapt`")
        try:
            conf = json.loads(cfg_file.read_text(encoding="utf-8"))
            if not isinstance(conf, dict):
                raise ValueError(f"a JSON {type(conf).__name__}, not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            raise _incomplete(path, f"{cfg_file} is corrupt ({size_text(cfg_file)}; {e})") from None
        if conf.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{cfg_file} is not an ifseg-deploy adapted model (format {conf.get('format')!r})")
        if int(conf.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer ifseg-deploy (format {conf['format_version']}, "
                                  f"this is {__version__} reading format {FORMAT_VERSION}); upgrade the package")
        try:
            arch = OFAConfig.from_dict(conf["architecture"])
            saved = list(conf["categories"])
            tokenizer = OFATokenizer.from_dir(path)
            prompt = conf.get("prompt", DEFAULT_PROMPT) if prompt is None else prompt
            if categories is not None:
                categories = [c.strip() for c in categories]
                name_tokens = tokenizer.name_tokens(categories)
                tokenizer.check_prompt_length(categories, max_text_tokens(arch.max_source_positions), prompt)
        except PromptTooLongError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, TokenizerError):
                raise _incomplete(path, str(e)) from None
            raise _incomplete(path, f"{cfg_file} is incomplete or invalid ({e})") from None
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise _incomplete(path, f"{WEIGHTS_FILE} is missing")
        try:
            state = load_safetensors(weights)
        except CheckpointError as e:
            raise _incomplete(path, str(e)) from None
        model = SegOFA(arch, num_classes=len(saved))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path / WEIGHTS_FILE} does not match {cfg_file}: {str(e).splitlines()[0]}"
                                  ) from None
        if categories is not None:
            model.set_prompt(tokenizer.prompt_ids(categories, prompt), name_tokens)
        return cls(model.to(device).eval(), tokenizer, saved if categories is None else categories, prompt,
                   _preprocessing(path, conf.get("preprocessing")), conf.get("metadata", {}))


def _incomplete(path: Path, why: str) -> CheckpointError:
    """A model directory whose files are damaged: the message says which file, its size, and what to do."""
    return CheckpointError(incomplete_message(path, "model", why))


def _preprocessing(path: Path, saved: Any) -> PreprocessConfig:
    try:
        return PreprocessConfig.from_dict(saved)
    except (InputError, TypeError) as e:
        raise _incomplete(path, f"{CONFIG_FILE} has invalid preprocessing ({e})") from None
