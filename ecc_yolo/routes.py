"""Route and exit names: where a frame can be answered, each name defined here and nowhere else.

Routes (what answers a frame):
    edge       the edge detector alone, on the device
    cloud      the full cloud detector on the image (ECC_I: the device sends the JPEG)
    adapted    edge features -> adapters -> cloud tail (ECC_A/ECC_D: the device sends quantised features)
    extension  a multi-exit (MEANet) edge's second exit, on the device
The stream client adds `fallback`: a frame offloaded but answered by the edge because the cloud did not answer.

Exits of a multi-exit edge, in the exit router's output order: main (the edge's own head), extension, cloud (which
the adapted route answers). The gate predicts one gain per offload route, in `GATE_ROUTES` order.

Evaluation encodes a per-frame choice of route as an integer array (`ROUTE_CODES`), the exit router's choice as
`EXIT_CODES`; `exits_to_routes` maps one to the other.
"""

from __future__ import annotations

import numpy as np

EDGE = "edge"
CLOUD = "cloud"
ADAPTED = "adapted"
EXTENSION = "extension"
FALLBACK = "fallback"  # stream client: offloaded, but answered by the edge (the cloud was slow or down)
# Evaluation only: the full cloud on the decoded JPEG the device sends (ecc_yolo.payload.codec.JPEG_QUALITY). `cloud` stays the
# cloud on the frame's own pixels (its ceiling); a frame a router sends to the cloud is answered as its JPEG is.
CLOUD_JPEG = "cloud_jpeg"
ANSWERED_AS = {CLOUD: CLOUD_JPEG}  # route a router chooses -> the evaluated detections that answer it

ROUTES = (EDGE, CLOUD, ADAPTED)  # what every ECC model can run
MULTI_EXIT_ROUTES = (*ROUTES, EXTENSION)  # a model with an extension block adds its extension exit
ALL_ROUTES = "all"  # pseudo-route of validation: forward returns every route and the gate's outputs at once
AUTO = "auto"  # inference: the gate (or a multi-exit edge's exit router) decides per frame
INFER_ROUTES = (AUTO, *MULTI_EXIT_ROUTES)  # the values of `route=`
DEVICE_ROUTES = (EDGE, EXTENSION)  # answered on the device: no server needed
STREAM_ROUTES = (EDGE, EXTENSION, ADAPTED, CLOUD, FALLBACK)  # what a streamed frame's `.route` can be

GATE_ROUTES = (ADAPTED, CLOUD)  # order of the gate's outputs: the predicted gain of each offload route
MAIN = "main"
EXITS = (MAIN, EXTENSION, CLOUD)  # order of the exit router's outputs: frames that are easy, hard, complex

ROUTE_CODES = {EDGE: 0, ADAPTED: 1, CLOUD: 2, EXTENSION: 3}  # how evaluation encodes where a frame was answered
EXIT_CODES = {name: code for code, name in enumerate(EXITS)}
EXIT_ROUTES = {MAIN: EDGE, EXTENSION: EXTENSION, CLOUD: ADAPTED}  # the route that answers each exit



def exits_to_routes(exits: np.ndarray) -> np.ndarray:
    """A multi-exit edge's exit codes (EXIT_CODES) -> ROUTE_CODES (the cloud exit is answered by the adapted route)."""
    table = np.zeros(len(EXITS), dtype=np.int64)
    for name, code in EXIT_CODES.items():
        table[code] = ROUTE_CODES[EXIT_ROUTES[name]]
    return table[np.asarray(exits)]


def route_names(codes: np.ndarray) -> np.ndarray:
    """ROUTE_CODES -> route names, elementwise."""
    names = np.empty(len(ROUTE_CODES), dtype=object)
    for name, code in ROUTE_CODES.items():
        names[code] = name
    return names[np.asarray(codes)]
