"""Image files in, image files out: what `fastpix predict` does with a Predictor.

collect_inputs finds the files (folders searched recursively), predict_files translates them in batches into
<output>/<name stem>.png, each written atomically (fastpix.files), reporting and skipping unreadable files.
"""

from __future__ import annotations

import functools
import os

from fastpix.data.decode import DecodeError, decode_image
from fastpix.files import atomic_write


def collect_inputs(items: list[str]) -> list[tuple[str, str]]:
    """(path, name relative to the output folder) for each file given, and for each image under each folder given
    (recursively, sorted; the sub-folders are kept in the name). A path that does not exist is kept, so that
    predict_files reports it with the unreadable files."""
    from fastpix.data.dataset import list_images

    found = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            found += [(path, os.path.relpath(path, item)) for path in list_images(item)]
        else:
            found.append((item, os.path.basename(item)))
    return found


def output_names(names: list[str]) -> list[str]:
    """<stem>.png per input name, none the same: every name that is unique keeps it; a name taken (a.jpg and a.png,
    or a third file whose own name is a_2.png) gets the first free _2, _3 … so that no result overwrites another."""
    wanted = [f"{os.path.splitext(os.fspath(name))[0]}.png" for name in names]
    first: dict[str, int] = {}
    for k, name in enumerate(wanted):
        first.setdefault(name, k)
    taken, out = set(wanted), []
    for k, name in enumerate(wanted):
        if first[name] != k:
            stem, n = name[: -len(".png")], 2
            while f"{stem}_{n}.png" in taken:
                n += 1
            name = f"{stem}_{n}.png"
            taken.add(name)
        out.append(name)
    return out


def predict_files(
    predictor,
    inputs: list[str],
    output_dir: str,
    batch_size: int = 8,
    progress: bool = True,
    seed=None,
    resize=None,
    names: list[str] | None = None,
):
    """Translate image files with `predictor` (a Predictor) into output_dir/<name stem>.png (names default to the
    inputs' file names). Returns (written paths, [(path, message)] of failures).

    An unreadable file is reported and skipped. File k of `inputs` draws its dropout noise from (seed, k), so the
    results do not depend on batch_size; with dropout on and no seed, one is picked for the whole run.
    """
    from tqdm import tqdm

    os.makedirs(output_dir, exist_ok=True)
    names = output_names([os.path.basename(os.fspath(p)) for p in inputs] if names is None else names)
    written, failed = [], []
    with tqdm(total=len(inputs), unit="img", disable=not progress) as bar:
        for start in range(0, len(inputs), batch_size):
            images, targets, indices = [], [], []
            for k in range(start, min(start + batch_size, len(inputs))):
                try:
                    images.append(decode_image(inputs[k], "L" if predictor.image_channels == 1 else "RGB"))
                except DecodeError as exc:  # report it and go on; the caller names the file, so the message need not
                    failed.append((inputs[k], str(exc).removeprefix(f"{os.fsdecode(inputs[k])}: ")))
                    continue
                targets.append(os.path.join(output_dir, names[k]))
                indices.append(k)
            if images:
                # The seed the call drew from (picked by the first batch when none was given) serves every batch.
                outputs, seed = predictor(
                    images, seed=seed, output_type="pil", resize=resize, indices=indices, return_seeds=True
                )
                for output, target in zip(outputs, targets):
                    atomic_write(target, functools.partial(_save_png, output))
                    written.append(target)
            bar.update(min(batch_size, len(inputs) - start))
    return written, failed


def _save_png(image, path: str):
    image.save(path, format="PNG")
