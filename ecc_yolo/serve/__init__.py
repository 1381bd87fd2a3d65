"""Serving ECC models over HTTP: the cloud server (`ecc-yolo serve`) and the edge stream client (`ecc-yolo detect`).

Modules, one concept each:
    protocol  what travels over HTTP: paths, detection JSON, error kinds and their status codes
    engine    the cloud's model work: request validation, letterbox, batched forward passes, NMS
    batcher   dynamic micro-batching of requests on a worker thread
    metrics   Prometheus counters and histograms of one server
    server    the FastAPI app (one process on uvicorn)
    kserve    the KServe v2 / Triton endpoints of the same app
    ray_app   the same app as a Ray Serve deployment (optional extra `ray`)
    run       `ecc-yolo serve`: picks the backend (uvicorn or Ray Serve) and runs it
    link      the edge's connection to a server: offload requests, health probes, back-off
    outputs   what `detect` writes: annotated video, JSON lines, live window
    client    the edge stream client: edge + gate on every frame, asynchronous offloading, in-order results
"""
