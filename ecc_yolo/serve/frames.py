"""The edge client's frame pipeline: frames in, per frame its edge answer, where it goes and the body to send.

`FramePipeline.run` takes a batch of frames (one or several streams'), letterboxes them (`infer.letterbox`), runs the
edge runtime once on the batch (edge detector, gate or exit router, and the adapters' encoders when a payload may be
needed), takes the per-frame decision (`DeploySettings.decide`: the model's router, its threshold or a budget
controller) and builds each offloaded frame's request body: its feature payload (route adapted) or its letterboxed
JPEG (route cloud). Sending, waiting and output belong to the client (`client.EdgeStreamClient`), the link
(`link.CloudLink`) and the outputs (`outputs.StreamRecorder`).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ecc_yolo.edge import EdgeOutputs, EdgeRuntime
from ecc_yolo.infer import detections, input_tensor, letterbox, nms_settings
from ecc_yolo.payload.codec import encode_features, encode_jpeg
from ecc_yolo.routes import ADAPTED, AUTO, CLOUD, EDGE, EXTENSION, FALLBACK


@dataclass
class Frame:
    """A frame between its edge pass and its emission."""

    index: int  # position in its stream
    path: str
    image: np.ndarray  # original BGR frame
    letterboxed: np.ndarray  # the network input's frame (BGR uint8), also what route=cloud sends as a JPEG
    edge_det: np.ndarray  # (N, 6) in original pixels: the edge's answer (or the extension exit's)
    route: str  # edge | extension | fallback, or the offload route the request goes to
    t0: float  # perf_counter when the frame was read
    wall_time: float
    time_s: float | None  # position in a video, seconds
    stream: int | None = None  # which source of a multi-stream run (None: a single source)
    gain: float | None = None  # route=auto: the score the decision thresholded
    body: bytes | None = None  # the request body to send (None: answered on the device)
    future: Future | None = None
    generation: int = 0  # link reconnect count when sent: a stale failure must not take a fresh link down
    bytes_sent: int = 0
    deadline: float = 0.0
    done_at: list = field(default_factory=list)  # perf_counter of the answer, stamped by a future callback
    fallback_cause: str | None = None  # cloud_unavailable, or the OffloadError kind (timeout, http_503, ...)

    @property
    def sent_shape(self) -> tuple[int, int]:
        """(h, w) of the image the server answers in: the letterboxed JPEG for route cloud, else the frame."""
        return tuple(self.letterboxed.shape[:2]) if self.route == CLOUD else tuple(self.image.shape[:2])


@dataclass(frozen=True)
class FrameInput:
    """One frame read from a source."""

    index: int
    path: str
    image: np.ndarray
    time_s: float | None = None
    stream: int | None = None


class FramePipeline:
    """Letterbox, edge pass, decision and request body for batches of frames."""

    def __init__(self, edge: EdgeRuntime, settings: Any, device: torch.device | str = "cpu") -> None:
        """`settings`: the client's `StreamSettings` (route, imgsz, NMS, deployment settings, JPEG quality)."""
        self.edge, self.settings, self.device = edge, settings, torch.device(device)
        self._nms = nms_settings(settings.conf, settings.iou, settings.max_det, settings.classes,
                                 settings.agnostic_nms)
        self._max_batch = edge.max_batch  # an export fixed to one frame runs frame by frame

    def run(self, frames: list[FrameInput], cloud_available: bool, thresholds: np.ndarray | None = None,
            force: np.ndarray | None = None) -> list[Frame]:
        """The batch's frames with their answers on the device and, for those to offload, the body to send
        (`cloud_available` False: they fall back to the edge's answer, cause cloud_unavailable). `thresholds`: per
        frame, a budget's threshold instead of the model's (`policy.StreamBudgets`); `force`: per frame, offload it
        under route=auto whatever the router says (a tracker's cue)."""
        step = self._max_batch or len(frames)
        part = lambda a, i: None if a is None else a[i:i + step]  # noqa: E731
        return [f for i in range(0, len(frames), step)
                for f in self._run(frames[i:i + step], cloud_available, part(thresholds, i), part(force, i))]

    @torch.inference_mode()
    def _run(self, inputs: list[FrameInput], cloud_available: bool, thresholds: np.ndarray | None,
             force: np.ndarray | None) -> list[Frame]:
        wall, t0 = time.time(), time.perf_counter()
        letterboxed = [letterbox(f.image, self.settings.imgsz, self.edge.stride) for f in inputs]
        x = input_tensor(letterboxed, self.device)
        route = self.settings.route
        outputs = self.edge.run(x, need_latents=route in (AUTO, ADAPTED))
        dets = self._detections(outputs.edge, self.edge.edge_end2end, x, inputs)
        frames = [Frame(f.index, str(f.path), f.image, lb, det, EDGE, t0, wall, f.time_s, stream=f.stream)
                  for f, lb, det in zip(inputs, letterboxed, dets)]
        if route == EDGE:
            return frames
        if route == EXTENSION:
            self._answer_on_extension(frames, range(len(frames)), outputs, x)
            return frames
        if route == AUTO:
            # the model's router (a multi-exit edge's: main, extension or cloud; the gate's: edge, adapted or
            # cloud); float64, as the gain was compared with the threshold before
            decision = self.settings.deploy.decide(np.asarray(outputs.gate, dtype=np.float64), outputs.router,
                                                   thresholds=thresholds, force=force)
            on_extension = np.flatnonzero(decision.answered_by(EXTENSION))
            self._answer_on_extension(frames, on_extension, outputs, x)
            targets = np.where(decision.answered_by(CLOUD), CLOUD, ADAPTED)
            for frame, gain in zip(frames, decision.scores):
                frame.gain = float(gain)
            wanted = [(i, targets[i]) for i in np.flatnonzero(decision.offloaded)]
        else:
            wanted = [(i, route) for i in range(len(frames))]
        payloads = (self.edge.payloads(outputs, (0, 0), tuple(x.shape[2:]))
                    if cloud_available and any(t == ADAPTED for _, t in wanted) else None)
        for i, target in wanted:
            frame = frames[i]
            if not cloud_available:
                frame.route, frame.fallback_cause = FALLBACK, "cloud_unavailable"
            elif target == ADAPTED:
                payload = dataclasses.replace(payloads[i], image_shape=tuple(frame.image.shape[:2]))
                frame.route, frame.body = ADAPTED, encode_features(payload)
            else:
                frame.route, frame.body = CLOUD, encode_jpeg(frame.letterboxed, self.settings.jpeg_quality)
        return frames

    def _detections(self, decoded: torch.Tensor, end2end: bool, x: torch.Tensor, frames: list[Any]
                    ) -> list[np.ndarray]:
        """NMS of the batch's decoded predictions, boxes scaled to each original frame's pixels."""
        shapes = [f.image.shape[:2] for f in frames]
        return [d.cpu().numpy() for d in detections(decoded, end2end, self._nms, tuple(x.shape[2:]), shapes)]

    def _answer_on_extension(self, frames: list[Frame], index: Any, outputs: EdgeOutputs, x: torch.Tensor) -> None:
        """Answer frames `index` with a multi-exit edge's extension exit, on the device (nothing is sent)."""
        index = [int(i) for i in index]
        if not index:
            return
        decoded = self.edge.extension(outputs, torch.tensor(index))
        chosen = [frames[i] for i in index]
        for frame, det in zip(chosen, self._detections(decoded, False, x, chosen)):
            frame.edge_det, frame.route = det, EXTENSION
