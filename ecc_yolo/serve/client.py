"""The edge stream client (`ecc-yolo detect`): edge detector and gate on every frame, chosen frames offloaded to a
cloud server asynchronously, exactly one result per frame, in frame order.

Per frame: letterbox (as Ultralytics' predict does), run the edge (and, for route=auto, the gate), decide where the
frame is answered (`ecc_yolo.policy`: the model's gate threshold, or a `BudgetController` with budget=), and if it is
offloaded send its feature payload (route adapted/auto) or its letterboxed JPEG (route cloud) on a sender thread.
At most `max_inflight` offloads are outstanding; a frame whose answer has not come back within `timeout` seconds,
whose request failed, or whose answer is malformed or for another frame, gets its edge detections (route
"fallback", its cause counted in `summary()["errors"]`) and the link backs off and probes until the server is back
(`link.CloudLink`). Frames are never dropped or reordered by the client.

On a multi-exit (MEANet) edge with route=auto the exit router decides instead: the main exit (route "edge"), the
extension exit run on the device (route "extension"), or the cloud; with budget= the budget thresholds the router's
probability that the frame is complex.

Each emitted `Results` carries `.route` (edge | extension | cloud | adapted | fallback) and `.record` (its JSON
line).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ultralytics.cfg import get_save_dir
from ultralytics.engine.results import Results
from ultralytics.utils import LOGGER, TQDM, ops

from ecc_yolo.args import user_overrides
from ecc_yolo.deploy import DeploySettings, resolve
from ecc_yolo.edge import EdgeRuntime, TorchEdge, load_edge
from ecc_yolo.infer import input_shape_for
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload.codec import JPEG_QUALITY
from ecc_yolo.policy import Budget, StreamBudgets
from ecc_yolo.routes import ADAPTED, AUTO, CLOUD, DEVICE_ROUTES, EXTENSION, FALLBACK
from ecc_yolo.serve.frames import Frame, FrameInput, FramePipeline
from ecc_yolo.serve.link import CloudLink, ModelMismatchError, OffloadError
from ecc_yolo.serve.outputs import StreamOutputs, StreamRecorder, format_summary
from ecc_yolo.serve.protocol import SERVED_BY_ROUTE, detections_array, resolve_token
from ecc_yolo.serve.sources import StreamSources, listed_sources


@dataclass(frozen=True)
class StreamSettings:
    """How the client answers frames; from a validated argument namespace (`from_args`)."""

    route: str = "auto"  # auto | edge | cloud | adapted | extension
    imgsz: tuple[int, int] = (640, 640)  # network input (h, w), pixels
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    deploy: DeploySettings = field(default_factory=DeploySettings)  # route=auto's router, threshold, margin
    classes: list[int] | None = None
    agnostic_nms: bool = False
    cloud: str | None = None  # server URL
    token: str | None = None
    timeout: float = 5.0  # seconds an offloaded frame may take
    max_inflight: int = 4
    budget: Budget | None = None  # over all streams
    stream_budget: Budget | None = None  # per stream of a multi-stream run
    jpeg_quality: int = JPEG_QUALITY  # route=cloud JPEG quality (ecc_yolo.payload.codec.JPEG_QUALITY)
    backoff: tuple[float, float] = (0.5, 8.0)  # seconds: base and cap of the jittered back-off between probes

    @classmethod
    def from_args(cls, args: Any, model: Any, overrides: dict[str, Any] | None = None) -> StreamSettings:
        """From validated arguments and the model's (or edge runtime's) deployment settings, where `overrides`
        (the `key=value` pairs the user gave; default: the deployment keys of `args` that differ from their
        defaults) win (imgsz checked against the model's stride; token falls back to the ECC_YOLO_TOKEN environment
        variable)."""
        deploy = resolve(model, user_overrides(args) if overrides is None else overrides)
        return cls(route=args.route, imgsz=input_shape_for(deploy.imgsz, int(model.stride)),
                   conf=deploy.conf, iou=deploy.iou, max_det=deploy.max_det, deploy=deploy,
                   classes=args.classes, agnostic_nms=bool(args.agnostic_nms),
                   cloud=args.cloud or None, token=resolve_token(args.token), timeout=float(args.timeout),
                   max_inflight=int(args.max_inflight), budget=Budget.parse(args.budget),
                   stream_budget=Budget.parse(args.stream_budget))


class EdgeStreamClient:
    """Streams frames through the edge model, offloading chosen frames to a cloud server."""

    def __init__(self, model: ECCModel | EdgeRuntime, settings: StreamSettings, device: torch.device | str = "cpu",
                 link: CloudLink | None = None) -> None:
        """Args:
        model: the ECC model, or an edge runtime (e.g. an exported ONNX edge, `ecc_yolo.edge.OnnxEdge`); the server
            must hold the same checkpoint (their fingerprints are compared).
        settings: routing, NMS and network settings.
        device: torch device for the edge.
        link: connection to the server (default: one to settings.cloud unless the route stays on the device).
        """
        if settings.route not in DEVICE_ROUTES and not settings.cloud and link is None:
            raise ValueError(f"route={settings.route} needs cloud=<server URL> (or route=edge)")
        self.edge = model if isinstance(model, EdgeRuntime) else TorchEdge(model, device)
        self.fingerprint = self.edge.fingerprint
        self.device, self.settings = torch.device(device), settings
        self.names = self.edge.names
        self.multi_exit = self.edge.multi_exit
        if settings.route == EXTENSION and not self.multi_exit:
            raise ValueError("route=extension needs a model with an extension block (cfg `extension:`)")
        self.pipeline = FramePipeline(self.edge, settings, self.device)
        self.link = link
        if self.link is None and settings.route not in DEVICE_ROUTES:
            self.link = CloudLink(settings.cloud, self.fingerprint, self.names, token=settings.token,
                                  timeout=settings.timeout, max_inflight=settings.max_inflight,
                                  backoff=settings.backoff)
        self.budgets: StreamBudgets | None = None
        self.cued: set[int] = set()  # streams whose next frame is offloaded whatever the router says (`cue`)
        self.sources: StreamSources | None = None
        self.recorder = StreamRecorder(self.names, settings.route)
        self.errors = self.recorder.errors  # fallback causes, counted
        self.fps = 30.0  # of the current (first) stream

    def connect(self) -> bool:
        """Check the server holds this model; False if it is unreachable for now (the stream starts on the edge).

        Raises:
            ModelMismatchError: it holds another model, or serves a smaller input size than this client's imgsz.
        """
        if self.link is None:
            return False
        if not self.link.connect():
            return False
        served = tuple(self.link.server_info.get("imgsz", self.settings.imgsz))
        if self.settings.route in (AUTO, ADAPTED) and any(a > b for a, b in zip(self.settings.imgsz, served)):
            raise ModelMismatchError(f"imgsz {list(self.settings.imgsz)} exceeds the server's input size "
                                     f"{list(served)}; pass imgsz={served[0]} or smaller")
        return True

    # -- the stream -----------------------------------------------------------------------------------------------
    def stream(self, source: Any, vid_stride: int = 1, buffer: bool = False, progress: bool = False,
               desc: str = "detect") -> Iterator[Results]:
        """Results for every frame of `source` (anything Ultralytics' loaders read: file, folder, video, stream URL,
        webcam index, a loader instance, or a `.streams` file listing several: `sources.StreamSources`), each
        stream's in order."""
        self.sources = sources = StreamSources(source, vid_stride=vid_stride, buffer=buffer)
        self.fps = sources.fps.get(0, 30.0)
        if (self.settings.budget is not None or self.settings.stream_budget is not None) and \
                self.settings.route == AUTO:
            # the score the budgets threshold: the gate's predicted gain, or a multi-exit router's P(complex)
            threshold = self.settings.deploy.threshold
            start = threshold if threshold is not None else 0.5  # P(complex) = 0.5: MEANet's argmax
            self.budgets = StreamBudgets(self.settings.budget, self.settings.stream_budget if sources.multi else None,
                                         start, sources.fps)
        bar = TQDM(total=sources.total_frames(), desc=desc, unit="frame", disable=not progress)
        pending: deque[Frame] = deque()
        self.recorder.t_start = time.perf_counter()
        try:
            for batch in sources:
                pending.extend(self.process(batch))
                for result in self._emit(pending, final=False):
                    bar.update(1)
                    yield result
            for result in self._emit(pending, final=True):
                bar.update(1)
                yield result
        finally:
            self.recorder.t_end = time.perf_counter()
            self.recorder.dead_sources = {sources.sources[i]: why for i, why in sources.dead.items()}
            bar.close()

    def process(self, inputs: list[FrameInput]) -> list[Frame]:
        """Edge pass and decision of a batch of frames (`FramePipeline`), and the offload requests sent."""
        available = self.link is not None and self.settings.route not in DEVICE_ROUTES and self.link.available()
        streams = [f.stream or 0 for f in inputs]
        thresholds = self.budgets.thresholds(streams) if self.budgets is not None else None
        force = np.array([s in self.cued for s in streams]) if self.cued else None
        self.cued.difference_update(streams)
        frames = self.pipeline.run(inputs, available, thresholds, force)
        for frame, stream in zip(frames, streams):
            if frame.body is not None:
                frame.bytes_sent = len(frame.body)
                frame.generation = self.link.reconnects
                frame.deadline = time.perf_counter() + self.settings.timeout
                frame.future = self.link.send(SERVED_BY_ROUTE[frame.route].path, frame.body, frame.deadline)
                frame.future.add_done_callback(lambda _, stamp=frame.done_at: stamp.append(time.perf_counter()))
                frame.body = None  # sent: not held while the answer is awaited
            elif frame.fallback_cause is not None:
                self.errors[frame.fallback_cause] += 1
            if self.budgets is not None:
                if frame.route == EXTENSION:
                    self.budgets.record(stream, False, 0)
                elif available:  # while the cloud is down the budget neither fills nor drains
                    self.budgets.record(stream, frame.future is not None, frame.bytes_sent)
        return frames

    def cue(self, stream: int = 0) -> None:
        """Offload the next frame of `stream` (route=auto) whatever the router says: a tracker saw a track start or
        end (`track_cue=True`)."""
        self.cued.add(stream)

    def _emit(self, pending: deque[Frame], final: bool) -> Iterator[Results]:
        """Emit finished frames from the head of `pending`, waiting for the head when too many offloads are
        outstanding (or at the end of the stream) and giving up on it at its deadline."""
        while pending:
            head = pending[0]
            if head.future is not None and not head.future.done():
                inflight = sum(f.future is not None for f in pending)
                if not (final or inflight >= self.settings.max_inflight or time.perf_counter() >= head.deadline):
                    return
                wait([head.future], timeout=max(head.deadline - time.perf_counter(), 0.0))
            yield self._finish(pending.popleft())

    def _finish(self, frame: Frame) -> Results:
        """The frame's final answer: the server's (checked to be this frame's) or, failing that, its edge answer."""
        det, route, server_ms = frame.edge_det, frame.route, None
        if frame.future is not None:
            try:
                answer = self.link.answer_for(frame.future, route, frame.sent_shape, self.settings.timeout)
            except OffloadError as error:
                route, frame.fallback_cause = FALLBACK, error.kind
                self.errors[error.kind] += 1
                if frame.generation == self.link.reconnects:
                    self.link.failed(error)
            else:
                det = detections_array(answer["detections"])
                if route == CLOUD:  # the server answered in pixels of the letterboxed JPEG it was sent
                    det[:, :4] = ops.scale_boxes(frame.sent_shape, det[:, :4], frame.image.shape[:2])
                server_ms = answer.get("server_ms")
        return self.recorder.result(frame, det, route, server_ms)

    def summary(self) -> dict[str, Any]:
        """Frames, frames/s, routes taken, offload ratio, bytes, fallbacks and errors of the stream so far."""
        return self.recorder.summary(self.link.reconnects if self.link is not None else 0,
                                     self.budgets.describe() if self.budgets is not None else {})

    def close(self) -> None:
        """Release the connection and its threads."""
        if self.link is not None:
            self.link.close()


def detect(args: Any, model: ECCModel | EdgeRuntime | None = None, overrides: dict[str, Any] | None = None,
           track: bool = False) -> dict[str, Any]:
    """Run a whole stream (`ecc-yolo detect`, or `ecc-yolo track` with track=True): results written under
    `<project>/<name>` when save=True, summary logged and returned (with `save_dir` when something was saved).

    Args:
        args: validated arguments (`ecc_yolo.args.get_args`), or a dict of overrides to validate, e.g.
            `{"model": "ecc.pt", "source": "video.mp4", "cloud": "http://127.0.0.1:8000", "route": "auto"}`.
        model: the ECC model (or an edge runtime, `ecc_yolo.edge.load_edge`) to use instead of loading args.model
            (a checkpoint, zoo name, or an edge export from `ecc-yolo export`).
        overrides: the `key=value` pairs the user gave, which win over the model's deployment settings (default:
            `args` itself when it is a dict, else the keys of `args` that differ from their defaults).
        track: track objects over each stream's final answers, whichever route gave them (`args.tracker`, an
            Ultralytics tracker YAML: `ecc_yolo.serve.tracking.StreamTracker`).

    Raises:
        ModelMismatchError: the server holds another model, or a smaller input size.
        ValueError: bad settings (e.g. no cloud= for a route that needs one).
        ecc_yolo.args.ArgumentError: an unknown argument or bad value.
    """
    from ultralytics.utils.checks import check_imshow
    from ultralytics.utils.torch_utils import select_device

    if isinstance(args, dict):
        from ecc_yolo.args import default_project, get_args

        overrides = dict(args) if overrides is None else overrides
        args = get_args({"project": default_project(), "name": "detect", **args})

    mode = "track" if track else "detect"
    device = select_device(args.device, verbose=False)
    edge = load_edge(model if model is not None else args.model, device)
    settings = StreamSettings.from_args(args, edge, overrides)
    fixed = getattr(edge, "imgsz", None)  # an exported graph has a fixed input size
    if fixed is not None and settings.imgsz != (fixed, fixed):
        LOGGER.info(f"{mode}: {args.model} was exported at imgsz={fixed}; using it")
        settings = dataclasses.replace(settings, imgsz=(fixed, fixed))
    listed = listed_sources(args.source)
    if listed:  # max_inflight holds per stream: one link serves them all
        settings = dataclasses.replace(settings, max_inflight=settings.max_inflight * len(listed))
    if settings.route == AUTO and args.verbose:
        LOGGER.info(f"{mode}: {settings.deploy.describe()}")
    client = EdgeStreamClient(edge, settings, device=device)
    tracker = None
    if track:
        from ecc_yolo.serve.tracking import StreamTracker

        tracker = StreamTracker(args.tracker)
    save_dir = get_save_dir(args) if args.save else None
    show = bool(args.show) and check_imshow(warn=True)  # no window on a headless machine, as in predict
    outputs = StreamOutputs(save_dir, save=bool(args.save), show=show,
                            plot_args={"line_width": args.line_width, "conf": args.show_conf,
                                       "labels": args.show_labels, "boxes": args.show_boxes})
    try:
        client.connect()
        frames = client.stream(args.source, vid_stride=args.vid_stride, buffer=args.stream_buffer,
                               progress=bool(args.verbose), desc=mode)
        try:
            for result in frames:
                stream = result.record.get("stream") or 0
                if tracker is not None:  # on the final answer, so that ids hold across a switch of routes
                    tracker.update(result, stream=stream, fps=client.sources.fps.get(stream, 30.0))
                    if args.track_cue and settings.route == AUTO and tracker.changed(stream):
                        client.cue(stream)  # a track started or ended: ask the cloud about the stream's next frame
                video_fps = max(1.0, client.sources.fps.get(stream, 30.0) / args.vid_stride)  # skipped frames must not
                if not outputs.write(result, result.record, client.sources.mode(stream), video_fps):  # shorten it
                    break
        finally:
            frames.close()
    finally:
        summary = client.summary()
        outputs.write_summary(summary)
        outputs.close()
        client.close()
    if save_dir is not None:
        summary["save_dir"] = str(save_dir)
    if args.verbose:
        saved = f"\nResults saved to {save_dir}" if save_dir else ""
        LOGGER.info(f"ecc-yolo {mode}: {format_summary(summary)}{saved}")
    return summary


__all__ = ["EdgeStreamClient", "ModelMismatchError", "StreamSettings", "detect", "format_summary"]
