"""Label palettes: the colours of a label map's classes, for the FCN-score's ground truth (`fastpix eval
--label-palette`) and the draw page's colour buttons (`fastpix serve --palette`).

A palette is a JSON file {"classes": [{"id": 0, "name": "road", "rgb": [128, 64, 128]}, ...]} with two optional keys:
"ignore_id" (the id of pixels of no class, 255 by default; not a class id) and "clear_id" (the class a cleared canvas
and the eraser paint, the first class by default). A flag that takes a palette also takes the name of one fastpix
ships in fastpix/palettes/ (facades, demo), when no file of that name exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from fastpix.errors import DataError

BUILT_IN_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "palettes")
FORMAT = '{"classes": [{"id": 0, "name": "road", "rgb": [128, 64, 128]}, ...], "ignore_id": 255}'


def built_in() -> list[str]:
    """The names of the palettes fastpix ships."""
    return sorted(n[: -len(".json")] for n in os.listdir(BUILT_IN_FOLDER) if n.endswith(".json"))


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    rgb: tuple[int, int, int]


def rgb_of(value) -> tuple[int, int, int]:
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or any(float(v) != int(v) for v in value):
        raise ValueError(f"rgb {value!r} is not three integers in 0..255")
    return rgb


class Palette:
    """The classes of a palette file (see the module docstring); errors name `flag` and the file."""

    def __init__(self, spec: dict, source: str = "palette", flag: str = "--palette"):
        try:
            self.classes = [
                LabelClass(int(c["id"]), str(c.get("name", c["id"])), rgb_of(c["rgb"])) for c in spec["classes"]
            ]
            self.ignore_id = int(spec.get("ignore_id", 255))
            self.clear_id = int(spec.get("clear_id", self.classes[0].id if self.classes else 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{flag} {source}: expected {FORMAT} ({type(exc).__name__}: {exc})") from None
        ids = [c.id for c in self.classes]
        if not ids or self.ignore_id in ids or len(set(ids)) != len(ids):
            raise DataError(
                f"{flag} {source}: needs at least one class, distinct class ids, and an ignore_id "
                f"({self.ignore_id}) that is not a class id"
            )
        if self.clear_id not in ids:
            raise DataError(f"{flag} {source}: clear_id {self.clear_id} is not one of its class ids")
        self.ids = np.array(ids, dtype=np.int64)
        self.rgb = np.array([c.rgb for c in self.classes], dtype=np.float64)
        self.names = {c.id: c.name for c in self.classes}

    def labels(self, image: np.ndarray, tolerance: float) -> np.ndarray:
        """HWC uint8 label colours → H×W class ids: the nearest palette colour within `tolerance`, else ignore."""
        pixels = image[..., :3].astype(np.float64)
        best = np.full(image.shape[:2], np.inf)
        found = np.full(image.shape[:2], self.ignore_id, dtype=np.int64)
        for class_id, colour in zip(self.ids, self.rgb):  # one class at a time: memory stays one H×W map
            distance = np.sqrt(((pixels - colour) ** 2).sum(-1))
            closer = (distance < best) & (distance <= tolerance)
            best = np.where(distance < best, distance, best)
            found[closer] = class_id
        found[best > tolerance] = self.ignore_id
        return found

    def as_json(self) -> dict:
        """What the draw page is given: the classes in file order and the clear class."""
        return {
            "classes": [{"id": c.id, "name": c.name, "rgb": list(c.rgb)} for c in self.classes],
            "clear_id": self.clear_id,
        }


def load_palette(path_or_name: str, flag: str = "--palette") -> Palette:
    """The palette in the file `path_or_name`, else the built-in palette of that name; DataError naming `flag`."""
    path = path_or_name
    if not os.path.isfile(path) and path_or_name in built_in():
        path = os.path.join(BUILT_IN_FOLDER, f"{path_or_name}.json")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise DataError(
            f"{flag} {path_or_name}: no such file, nor a built-in palette ({', '.join(built_in())})"
        ) from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DataError(f"{flag} {path_or_name}: expected {FORMAT} ({type(exc).__name__}: {exc})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{flag} {path_or_name}: expected {FORMAT} (got JSON that is not an object)")
    return Palette(spec, path_or_name, flag)
