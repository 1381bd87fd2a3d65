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
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ultralytics.cfg import get_save_dir
from ultralytics.data.augment import LetterBox
from ultralytics.data.build import load_inference_source
from ultralytics.engine.results import Results
from ultralytics.utils import LOGGER, TQDM, ops

from ecc_yolo.args import user_overrides
from ecc_yolo.deploy import DeploySettings, resolve
from ecc_yolo.edge import EdgeOutputs, EdgeRuntime, TorchEdge, load_edge
from ecc_yolo.infer import detections, input_shape_for, input_tensor, nms_settings
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload.codec import JPEG_QUALITY, encode_features, encode_jpeg
from ecc_yolo.policy import Budget, BudgetController
from ecc_yolo.routes import ADAPTED, AUTO, CLOUD, DEVICE_ROUTES, EDGE, EXTENSION, FALLBACK, STREAM_ROUTES
from ecc_yolo.serve.link import CloudLink, ModelMismatchError, OffloadError
from ecc_yolo.serve.protocol import SERVED_BY_ROUTE, detections_array, resolve_token


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
    budget: Budget | None = None
    jpeg_quality: int = JPEG_QUALITY  # route=cloud JPEG quality (ecc_yolo.payload.codec.JPEG_QUALITY)
    backoff: tuple[float, float] = (0.5, 8.0)  # seconds: base and cap of the jittered back-off between probes

    @classmethod
    def from_args(cls, args: Any, model: Any, overrides: dict[str, Any] | None = None) -> StreamSettings:
        """From validated arguments and the model's (or edge runtime's) deployment settings, where `overrides`
        (the `key=value` pairs the user gave; default: the deployment keys of `args` that differ from their defaults) win (imgsz checked
        against the model's stride; token falls back to the ECC_YOLO_TOKEN environment variable)."""
        deploy = resolve(model, user_overrides(args) if overrides is None else overrides)
        return cls(route=args.route, imgsz=input_shape_for(deploy.imgsz, int(model.stride)),
                   conf=deploy.conf, iou=deploy.iou, max_det=deploy.max_det, deploy=deploy,
                   classes=args.classes, agnostic_nms=bool(args.agnostic_nms),
                   cloud=args.cloud or None, token=resolve_token(args.token), timeout=float(args.timeout),
                   max_inflight=int(args.max_inflight), budget=Budget.parse(args.budget))


@dataclass
class _Frame:
    """A frame between its edge pass and its emission."""

    index: int
    path: str
    image: np.ndarray  # original BGR frame
    letterboxed_shape: tuple[int, int]
    edge_det: np.ndarray  # (N, 6) in original pixels
    route: str  # edge | fallback, or the offload route the request went to
    t0: float  # perf_counter when the frame was read
    wall_time: float
    time_s: float | None
    gain: float | None = None
    future: Future | None = None
    generation: int = 0  # link reconnect count when sent: a stale failure must not take a fresh link down
    bytes_sent: int = 0
    deadline: float = 0.0
    done_at: list = field(default_factory=list)  # perf_counter of the answer, stamped by a future callback
    fallback_cause: str | None = None  # cloud_unavailable, or the OffloadError kind (timeout, http_503, ...)


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
        if settings.route == "extension" and not self.multi_exit:
            raise ValueError("route=extension needs a model with an extension block (cfg `extension:`)")
        # Square letterbox (predict's, without its minimal-rectangle option): payloads of one size batch on the server.
        self._letterbox = LetterBox(settings.imgsz, auto=False, stride=self.edge.stride)
        self._nms = nms_settings(settings.conf, settings.iou, settings.max_det, settings.classes,
                                 settings.agnostic_nms)
        self.link = link
        if self.link is None and settings.route not in DEVICE_ROUTES:
            self.link = CloudLink(settings.cloud, self.fingerprint, self.names, token=settings.token,
                                  timeout=settings.timeout, max_inflight=settings.max_inflight,
                                  backoff=settings.backoff)
        self.controller: BudgetController | None = None
        self.stats: Counter = Counter()
        self.errors: Counter = Counter()
        self._t_start = self._t_end = None
        self.dataset, self.fps = None, 30.0  # of the current stream

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
    def stream(self, source: Any, vid_stride: int = 1, buffer: bool = False, progress: bool = False
               ) -> Iterator[Results]:
        """Results for every frame of `source` (anything Ultralytics' loaders read: file, folder, video, stream URL,
        webcam index, or a loader instance), in order."""
        dataset = load_inference_source(source, batch=1, vid_stride=vid_stride, buffer=buffer)
        self.dataset = dataset
        self.fps = fps = self._fps(dataset)
        if self.settings.budget is not None and self.settings.route == "auto":
            # the score the budget thresholds: the gate's predicted gain, or a multi-exit router's P(complex)
            threshold = self.settings.deploy.threshold
            start = threshold if threshold is not None else 0.5  # P(complex) = 0.5: MEANet's argmax
            self.controller = BudgetController(self.settings.budget, threshold=start, fps=fps)
        total = getattr(dataset, "frames", None) if getattr(dataset, "mode", "") == "video" else None
        bar = TQDM(total=total, desc="detect", unit="frame", disable=not progress)
        pending: deque[_Frame] = deque()
        self._t_start = time.perf_counter()
        index = 0
        try:
            for paths, images, _ in dataset:
                for path, image in zip(paths, images):
                    pending.append(self._process(index, path, image, dataset, fps))
                    index += 1
                    for result in self._emit(pending, final=False):
                        bar.update(1)
                        yield result
            for result in self._emit(pending, final=True):
                bar.update(1)
                yield result
        finally:
            self._t_end = time.perf_counter()
            bar.close()
            if hasattr(dataset, "close"):
                dataset.close()

    @staticmethod
    def _fps(dataset: Any) -> float:
        fps = getattr(dataset, "fps", None)
        fps = fps[0] if isinstance(fps, (list, tuple)) and fps else fps
        return float(fps) if fps and fps > 0 else 30.0

    @torch.inference_mode()
    def _process(self, index: int, path: str, image: np.ndarray, dataset: Any, fps: float) -> _Frame:
        """Edge pass, decision and (maybe) the offload request of one frame."""
        t0, wall = time.perf_counter(), time.time()
        video = getattr(dataset, "mode", "") == "video"
        time_s = (dataset.frame - 1) * getattr(dataset, "vid_stride", 1) / fps if video else None
        letterboxed = self._letterbox(image=image)
        x = input_tensor([letterboxed], self.device)
        route = self.settings.route
        outputs = self.edge.run(x, need_latents=route in (AUTO, ADAPTED))
        det = self._detections(outputs.edge, self.edge.edge_end2end, x, image)
        frame = _Frame(index, str(path), image, letterboxed.shape[:2], det, EDGE, t0, wall, time_s)

        if route == EDGE:
            return frame
        if route == EXTENSION:
            return self._answer_on_extension(frame, outputs, x, image)
        available = self.link.available()
        if route == AUTO:
            # the model's router (a multi-exit edge's: main, extension or cloud; the gate's: edge, adapted or
            # cloud); float64, as the gain was compared with the threshold before
            decision = self.settings.deploy.decide(np.asarray(outputs.gate, dtype=np.float64), outputs.router,
                                                   controller=self.controller)
            frame.gain = float(decision.scores[0])
            if decision.answered_by(EXTENSION)[0]:
                if self.controller is not None:
                    self.controller.record(False, 0)
                return self._answer_on_extension(frame, outputs, x, image)
            wanted, target = bool(decision.offloaded[0]), CLOUD if decision.answered_by(CLOUD)[0] else ADAPTED
        else:
            wanted, target = True, route
        if wanted and not available:
            frame.route, frame.fallback_cause = FALLBACK, "cloud_unavailable"
            self.errors["cloud_unavailable"] += 1
        elif wanted:
            if target == ADAPTED:
                body = encode_features(self.edge.payloads(outputs, image.shape[:2], tuple(x.shape[2:]))[0])
            else:
                body = encode_jpeg(letterboxed, self.settings.jpeg_quality)
            frame.route, frame.bytes_sent = target, len(body)
            frame.generation = self.link.reconnects
            frame.deadline = time.perf_counter() + self.settings.timeout
            frame.future = self.link.send(SERVED_BY_ROUTE[target].path, body, frame.deadline)
            frame.future.add_done_callback(lambda _, stamp=frame.done_at: stamp.append(time.perf_counter()))
        if self.controller is not None and available:  # while the cloud is down the budget neither fills nor drains
            self.controller.record(frame.future is not None, frame.bytes_sent)
        return frame

    def _detections(self, decoded: torch.Tensor, end2end: bool, x: torch.Tensor, image: np.ndarray) -> np.ndarray:
        """NMS of one frame's decoded predictions, boxes scaled to the original frame's pixels."""
        return detections(decoded, end2end, self._nms, tuple(x.shape[2:]), [image.shape[:2]])[0].cpu().numpy()

    def _answer_on_extension(self, frame: _Frame, outputs: EdgeOutputs, x: torch.Tensor, image: np.ndarray) -> _Frame:
        """Answer a frame with a multi-exit edge's extension exit, on the device (nothing is sent)."""
        decoded = self.edge.extension(outputs, torch.tensor([0]))
        frame.edge_det, frame.route = self._detections(decoded, False, x, image), "extension"
        return frame

    def _emit(self, pending: deque[_Frame], final: bool) -> Iterator[Results]:
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

    def _finish(self, frame: _Frame) -> Results:
        det, route, server_ms = frame.edge_det, frame.route, None
        if frame.future is not None:
            error = None
            if not frame.future.done():
                error = OffloadError("timeout", f"no answer within {self.settings.timeout:g} s")
            elif frame.future.cancelled():  # the link was closed under the stream
                error = OffloadError("cancelled", "the connection was closed")
            elif frame.future.exception() is not None:
                error = frame.future.exception()
                error = error if isinstance(error, OffloadError) else OffloadError("client", repr(error))
            if error is None:
                answer = frame.future.result()  # a well-formed answer (the link checked it) ...
                sent_shape = frame.letterboxed_shape if route == CLOUD else frame.image.shape[:2]
                if answer["route"] != route or tuple(answer["image_shape"]) != tuple(sent_shape):
                    error = OffloadError("bad_answer", f"answer for route {answer['route']} and image shape "
                                                       f"{answer['image_shape']}, not for this frame")  # ... to another
            if error is None:
                det = detections_array(answer["detections"])
                if route == CLOUD:  # the server answered in pixels of the letterboxed JPEG it was sent
                    det[:, :4] = ops.scale_boxes(frame.letterboxed_shape, det[:, :4], frame.image.shape[:2])
                server_ms = answer.get("server_ms")
            else:
                route, frame.fallback_cause = FALLBACK, error.kind
                self.errors[error.kind] += 1
                if frame.generation == self.link.reconnects:
                    self.link.failed(error)
        done = frame.done_at[0] if frame.done_at and route != "fallback" else time.perf_counter()
        latency_ms = (done - frame.t0) * 1000
        self.stats["frames"] += 1
        self.stats[route] += 1
        self.stats["bytes"] += frame.bytes_sent
        self.stats["sent"] += frame.future is not None
        result = Results(frame.image, path=frame.path, names=self.names, boxes=torch.from_numpy(det))
        result.route = route
        result.record = {
            "frame": frame.index,
            "time_s": None if frame.time_s is None else round(frame.time_s, 4),
            "wall_time": round(frame.wall_time, 4),
            "route": route,
            "boxes": [{"xyxy": [round(float(v), 2) for v in row[:4]], "conf": round(float(row[4]), 5),
                       "cls": int(row[5]), "name": self.names.get(int(row[5]), str(int(row[5])))} for row in det],
            "bytes_sent": frame.bytes_sent,
            "latency_ms": round(latency_ms, 3),
            "fallback_cause": frame.fallback_cause,  # why an offloaded frame was answered by the edge (else None)
            **({"gain": round(frame.gain, 5)} if frame.gain is not None else {}),
            **({"server_ms": server_ms} if server_ms is not None else {}),
        }
        return result

    def summary(self) -> dict[str, Any]:
        """Frames, frames/s, routes taken, offload ratio, bytes, fallbacks and errors of the stream so far."""
        n = self.stats["frames"]
        seconds = ((self._t_end or time.perf_counter()) - self._t_start) if self._t_start else 0.0
        out = {
            "frames": n,
            "seconds": round(seconds, 3),
            "fps": round(n / seconds, 2) if seconds > 0 else 0.0,
            "route": self.settings.route,
            "routes": {r: self.stats[r] for r in STREAM_ROUTES},
            "offload_ratio": round(self.stats["sent"] / n, 4) if n else 0.0,
            "cloud_answered_ratio": round((self.stats["adapted"] + self.stats["cloud"]) / n, 4) if n else 0.0,
            "bytes_sent": self.stats["bytes"],
            "mean_bytes_per_frame": round(self.stats["bytes"] / n, 1) if n else 0.0,
            "fallbacks": self.stats["fallback"],
            "errors": dict(self.errors),
            "reconnects": self.link.reconnects if self.link is not None else 0,
        }
        if self.controller is not None:
            out["budget_threshold"] = round(self.controller.threshold, 5)
        return out

    def close(self) -> None:
        """Release the connection and its threads."""
        if self.link is not None:
            self.link.close()


def format_summary(summary: dict[str, Any]) -> str:
    """One readable line of a stream summary."""
    routes = ", ".join(f"{k} {v}" for k, v in summary["routes"].items() if v)
    return (f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} FPS), routes: {routes}; "
            f"offload ratio {summary['offload_ratio']:.1%}, {summary['mean_bytes_per_frame']:.0f} B/frame sent, "
            f"{summary['fallbacks']} fallbacks" + (f" {summary['errors']}" if summary["errors"] else ""))


def detect(args: Any, model: ECCModel | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a whole stream (`ecc-yolo detect`): results written under `<project>/<name>` when save=True, summary
    logged and returned (with `save_dir` when something was saved).

    Args:
        args: validated arguments (`ecc_yolo.args.get_args`), or a dict of overrides to validate, e.g.
            `{"model": "ecc.pt", "source": "video.mp4", "cloud": "http://127.0.0.1:8000", "route": "auto"}`.
        model: the ECC model to use instead of loading args.model (a checkpoint, zoo name, or an exported .onnx
            edge from `ecc-yolo export`).
        overrides: the `key=value` pairs the user gave, which win over the model's deployment settings (default:
            `args` itself when it is a dict, else the keys of `args` that differ from their defaults).

    Raises:
        ModelMismatchError: the server holds another model, or a smaller input size.
        ValueError: bad settings (e.g. no cloud= for a route that needs one).
        ecc_yolo.args.ArgumentError: an unknown argument or bad value.
    """
    from ultralytics.utils.checks import check_imshow
    from ultralytics.utils.torch_utils import select_device

    from ecc_yolo.serve.outputs import StreamOutputs

    if isinstance(args, dict):
        from ecc_yolo.args import default_project, get_args

        overrides = dict(args) if overrides is None else overrides
        args = get_args({"project": default_project(), "name": "detect", **args})

    device = select_device(args.device, verbose=False)
    edge = load_edge(model if model is not None else args.model, device)
    settings = StreamSettings.from_args(args, edge, overrides)
    fixed = getattr(edge, "imgsz", None)  # an exported graph has a fixed input size
    if fixed is not None and settings.imgsz != (fixed, fixed):
        LOGGER.info(f"detect: {args.model} was exported at imgsz={fixed}; using it")
        settings = dataclasses.replace(settings, imgsz=(fixed, fixed))
    if settings.route == AUTO and args.verbose:
        LOGGER.info(f"detect: {settings.deploy.describe()}")
    client = EdgeStreamClient(edge, settings, device=device)
    save_dir = get_save_dir(args) if args.save else None
    show = bool(args.show) and check_imshow(warn=True)  # no window on a headless machine, as in predict
    outputs = StreamOutputs(save_dir, save=bool(args.save), show=show,
                            plot_args={"line_width": args.line_width, "conf": args.show_conf,
                                       "labels": args.show_labels, "boxes": args.show_boxes})
    try:
        client.connect()
        frames = client.stream(args.source, vid_stride=args.vid_stride, buffer=args.stream_buffer,
                               progress=bool(args.verbose))
        try:
            for result in frames:
                video_fps = max(1.0, client.fps / args.vid_stride)  # skipped frames must not shorten the video
                if not outputs.write(result, result.record, client.dataset.mode, video_fps):
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
        LOGGER.info(f"ecc-yolo detect: {format_summary(summary)}{saved}")
    return summary


__all__ = ["EdgeStreamClient", "ModelMismatchError", "StreamSettings", "detect", "format_summary"]
