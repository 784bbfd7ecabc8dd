"""Where capture frames come from: a webcam, a video file or a folder of photos.

Each source yields ``(frame_bgr, reference)`` where ``reference`` says how to find the
frame again (``{"file": …, "frame_index": …}``); all OpenCV camera handling lives here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from physical_adv.errors import UserError
from physical_adv.images import IMAGE_SUFFIXES
from physical_adv.ui import console


class Source:
    kind = "?"
    live = False

    def frames(self) -> Iterator[tuple[np.ndarray, dict]]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind}

    def close(self) -> None:
        pass


class ImageFolder(Source):
    """Photos in a folder, in sorted order; non-image files are skipped with a warning."""

    kind = "images"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"photo folder not found: {self.folder}")
        entries = sorted(p for p in self.folder.iterdir() if p.is_file())
        self.files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not self.files:
            raise UserError(f"no images in {self.folder}")
        if skipped:
            console.print(f"[yellow]warning:[/] skipping {len(skipped)} non-image file(s) in {self.folder}: {', '.join(skipped[:5])}"
                          + (" …" if len(skipped) > 5 else ""), soft_wrap=True)

    def frames(self):
        for path in self.files:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                console.print(f"[yellow]warning:[/] cannot read {path.name}; skipped")
                continue
            yield img, {"file": str(path), "frame_index": 0}

    def describe(self):
        return {"kind": self.kind, "folder": str(self.folder), "files": len(self.files)}


class VideoFile(Source):
    kind = "video"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"video not found: {self.path}")
        self.cap = cv2.VideoCapture(str(self.path))
        ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok or first is None:
            self.cap.release()
            raise UserError(f"cannot read {self.path} as a video")
        self.first = first

    def frames(self):
        index = 0
        frame = self.first
        while frame is not None:
            yield frame, {"file": str(self.path), "frame_index": index}
            ok, frame = self.cap.read()
            frame = frame if ok else None
            index += 1

    def describe(self):
        return {"kind": self.kind, "file": str(self.path), "fps": self.cap.get(cv2.CAP_PROP_FPS),
                "frame_count": int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))}

    def close(self):
        self.cap.release()


class Camera(Source):
    """A webcam by index: asks for MJPG at 1280×720 and reports what was granted."""

    kind = "camera"
    live = True

    def __init__(self, index: int, width: int = 1280, height: int = 720, warmup: int = 10) -> None:
        self.index = index
        self.cap = cv2.VideoCapture(index)
        if not self.cap.isOpened():
            raise UserError(f"cannot open camera {index} (is it connected and free? try another --camera index)")
        self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))  # before the size, or it is ignored
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        for _ in range(warmup):  # let exposure and white balance settle
            self.cap.read()
        ok, frame = self.cap.read()
        if not ok:
            self.cap.release()
            raise UserError(f"camera {index} opened but gives no frames")
        self.first = frame
        self.granted = {
            "width": int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": self.cap.get(cv2.CAP_PROP_FPS), "backend": self.cap.getBackendName(),
        }
        console.print(f"camera {index}: asked for {width}x{height}, granted {self.granted['width']}x{self.granted['height']} "
                      f"at {self.granted['fps']:.0f} fps ({self.granted['backend']})")

    def frames(self):
        index, frame = 0, self.first
        while frame is not None:
            yield frame, {"file": None, "frame_index": index, "camera": self.index, "t": time.time()}
            ok, frame = self.cap.read()
            if not ok:
                console.print(f"[yellow]camera {self.index} stopped delivering frames (unplugged?); ending the session")
                frame = None
            index += 1

    def describe(self):
        return {"kind": self.kind, "index": self.index, "granted": self.granted}

    def close(self):
        self.cap.release()
