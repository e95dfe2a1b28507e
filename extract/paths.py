"""Input paths checked before anything heavy is imported: a missing ``--data-dir``, or an
``--audio-model`` / ``--text-model`` folder that is not a model folder, is answered in a fraction of
a second with one line naming the path, what is missing and the fix (torch and transformers take
seconds to import, and transformers' own message for a folder without a tokenizer is five lines
about sentencepiece). Standard library only."""

from __future__ import annotations

from pathlib import Path

from pipeline.remote_files import is_url

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z")
# any one of these lets AutoTokenizer build a tokenizer (fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


class InputPathError(ValueError):
    """An input path that cannot be used; one line saying why and what to pass instead."""


class ModelFolderError(InputPathError):
    """A model folder that cannot be used."""


def looks_like_path(model_id: str) -> bool:
    """Meant as a folder, not a hub id (NAME or ORG/NAME): ./x, /x, ~/x, a/b/c, C:\\x."""
    return (
        model_id.startswith((".", "/", "~"))
        or "\\" in model_id
        or model_id.count("/") > 1
        or (len(model_id) > 1 and model_id[1] == ":")
    )


def hint(option: str) -> str:
    return f"pass an existing model folder or a hub id (ORG/NAME) with {option}"


def _archive(p: Path) -> str | None:
    name = p.name.lower()
    return next((a for a in ARCHIVES if name.endswith(a)), None)


def _unpack(archive: Path, into: Path) -> str:
    kind = _archive(archive)
    if kind == ".zip":
        return f"unzip it (`unzip {archive} -d {into}`)"
    if kind == ".7z":
        return f"unpack it (`7z x {archive} -o{into}`)"
    return f"unpack it (`tar -xf {archive} -C {into}`)"


def _fix(folder: Path, option: str) -> str:
    """What to do about a folder without config.json, judged by what it holds."""
    inner = sorted(d for d in folder.iterdir() if d.is_dir() and (d / "config.json").is_file())
    if len(inner) == 1:
        return f"the model is one level down: pass {option} {inner[0]}"
    if inner:
        return f"it holds model folders ({', '.join(d.name for d in inner)}): pass one of them with {option}"
    archives = sorted(p for p in folder.iterdir() if p.is_file() and _archive(p))
    if archives:
        return (
            f"it holds {archives[0].name}: {_unpack(archives[0], folder)} and pass the folder that then holds "
            "config.json"
        )
    save = "save the model there with save_pretrained, or download it with `hf download ID --local-dir DIR`"
    return f"the folder is empty; {save}" if not any(folder.iterdir()) else save


def require_model_folder(model_id: str, option: str, *, needs: str = "") -> None:
    """Refuse a model path that does not exist, is a file (an archive not unpacked), or is a folder
    without ``config.json`` (or, ``needs`` = "tokenizer" / "feature extractor", without that part's
    files). A hub id that names no local folder is left to the loader."""
    path = Path(model_id).expanduser()
    if not (looks_like_path(model_id) or path.exists()):
        return
    if not path.exists():
        raise ModelFolderError(f"{option} {model_id}: the folder does not exist; {hint(option)}")
    if path.is_file():
        fix = (
            _unpack(path, path.parent / path.name[: -len(_archive(path))]) + " and pass that folder"
            if _archive(path)
            else "pass the folder that holds config.json and the weights"
        )
        raise ModelFolderError(f"{option} {model_id}: a file, not a model folder; {fix}")
    if not (path / "config.json").is_file():
        raise ModelFolderError(
            f"{option} {model_id}: not a model folder (no config.json in it); {_fix(path, option)}"
        )
    if needs == "tokenizer" and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFolderError(
            f"{option} {model_id}: no tokenizer in the model folder (none of "
            f"{', '.join(TOKENIZER_FILES[:3])}, …); save it there too with "
            "tokenizer.save_pretrained, or download the whole model with `hf download ID "
            "--local-dir DIR`"
        )
    if needs == "feature extractor" and not (path / "preprocessor_config.json").is_file():
        raise ModelFolderError(
            f"{option} {model_id}: no preprocessor_config.json (the feature extractor's settings) "
            "in the model folder; save it there too with feature_extractor.save_pretrained, or "
            "download the whole model with `hf download ID --local-dir DIR`"
        )


def check_model_folders(cache) -> None:
    """Refuse an ``--audio-model``/``--text-model`` that names a path that is not a usable model
    folder, before any work (reading or generating the dataset, importing torch) starts."""
    require_model_folder(cache.audio_model, "--audio-model", needs="feature extractor")
    require_model_folder(cache.text_model, "--text-model", needs="tokenizer")


def check_data_dir(data_dir, makes_data_dir: bool) -> None:
    """The dataset folder must exist, unless the dataset generates it (the demo)."""
    if is_url(data_dir):  # read (and refused where it cannot be) by the dataset adapter
        return
    if not makes_data_dir and not Path(data_dir).expanduser().is_dir():
        what = "a file, not a folder" if Path(data_dir).expanduser().is_file() else "no such folder"
        raise InputPathError(
            f"--data-dir {data_dir}: {what}; pass the dataset's folder as --data-dir"
        )
