"""Serving ECC models over HTTP: the cloud server (`ecc-yolo serve`) and the edge stream client (`ecc-yolo detect`).

Modules, one concept each:
    protocol  what travels over HTTP: paths, detection JSON, error kinds and their status codes
    engine    the cloud's model work: request validation, letterbox, batched forward passes, NMS
    batcher   dynamic micro-batching of requests on a worker thread
    metrics   Prometheus counters and histograms of one server
    intake    what every inference request passes: auth, deadline, admission, bounded body read, parse, batch
    server    the FastAPI app (one process on uvicorn)
    kserve    the KServe v2 / Triton endpoints of the same app
    ray_app   the same app as a Ray Serve deployment (optional extra `ray`)
    run       `ecc-yolo serve`: picks the backend (uvicorn or Ray Serve) and runs it
    link      the edge's connection to a server: offload requests, health probes, back-off
    sources   what `detect` reads: one source, or every source a `.streams` file lists, a frame of each per tick
    frames    the frame pipeline: letterbox, edge pass on a batch, decision, request body
    outputs   what `detect` reports and writes: records, summary, annotated video, JSON lines, live window
    tracking  `ecc-yolo track`: Ultralytics' trackers on each stream's final answers
    client    the edge stream client: sources -> frames -> link -> outputs, asynchronous offloading, in-order results
"""
