"""ECCPredictor: Ultralytics' detection predictor answering through one route, or letting the gate choose.

`route=edge|cloud|adapted` (or `extension` on a multi-exit edge) runs that route for every image. `route=auto` runs
the edge and the gate on every image and the adapted route only on the images the offload policy sends to the
cloud (`ecc_yolo.policy`); on a multi-exit edge the router picks the main exit, the extension exit or the cloud, and
a frame stopped at the main exit runs nothing else. Each Results object records the route that answered it in
`.route` (edge, extension, adapted or cloud). This is the in-process simulation of ECC_D; the networked
version (device and cloud in different processes) is `ecc-yolo detect` against `ecc-yolo serve`.
"""

from __future__ import annotations

from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.utils import DEFAULT_CFG, nms, ops

from ecc_yolo.args import all_defaults, check_ecc_values, check_keys, default_project
from ecc_yolo.engine.validator import find_ecc
from ecc_yolo.nn.ecc_model import EXTENSION
from ecc_yolo.policy import EXIT_CODES, offload_mask, three_exit_choice


class ECCPredictor(DetectionPredictor):
    """Predict with a chosen route (see the module docstring)."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Ultralytics predictor construction with ecc-yolo's arguments (`route`)."""
        overrides = dict(overrides or {})
        if not overrides.get("project"):
            overrides["project"] = default_project()
        check_keys(overrides)
        check_ecc_values(overrides)
        super().__init__(all_defaults() if cfg is DEFAULT_CFG else cfg, overrides, _callbacks)

    def inference(self, im: torch.Tensor, *args, **kwargs) -> dict[str, Any]:
        """Raw outputs per route for the batch, plus which images were offloaded."""
        ecc = find_ecc(self.model)
        route = self.args.route
        if route != "auto":
            ecc.set_route(route)
            return {"route": route, route: super().inference(im, *args, **kwargs)}
        edge_out, feats = ecc.edge_forward(im, keep=ecc.device_layers)
        if ecc.router is not None:  # multi-exit edge: the router picks main, extension or cloud for each frame
            exits = three_exit_choice(ecc.exit_logits(feats, edge_out).float().cpu().numpy())
            offload = torch.from_numpy(exits == EXIT_CODES["cloud"]).to(im.device)
            stop_extension = torch.from_numpy(exits == EXIT_CODES["extension"]).to(im.device)
        else:
            scores = ecc.gate_scores(feats, edge_out)[:, 0].float().cpu().numpy()
            offload = torch.from_numpy(offload_mask(scores, ecc.gate_threshold)).to(im.device)
            stop_extension = torch.zeros_like(offload)
        out = {"route": route, "edge": edge_out, "offload": offload, "stop_extension": stop_extension}
        if offload.any():
            out["adapted"] = ecc.adapted_tail(ecc.adapt({k: v[offload] for k, v in feats.items()}))
        if stop_extension.any():
            out[EXTENSION] = ecc.extension_forward({k: v[stop_extension] for k, v in feats.items()})
        return out

    def _nms(self, output: Any, end2end: bool) -> list[torch.Tensor]:
        return nms.non_max_suppression(
            output,
            self.args.conf,
            self.args.iou,
            self.args.classes,
            self.args.agnostic_nms,
            max_det=self.args.max_det,
            end2end=end2end,
        )

    def postprocess(self, preds: dict[str, Any], img: torch.Tensor, orig_imgs: Any, **kwargs):
        """NMS per route with that route's head settings; Results carry `.route`."""
        ecc = find_ecc(self.model)
        end2end = {"edge": ecc.edge.end2end, "cloud": ecc.cloud.end2end, "adapted": ecc.cloud.end2end, EXTENSION: False}
        if not isinstance(orig_imgs, list):
            orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
        if preds["route"] != "auto":
            route = preds["route"]
            dets, routes = self._nms(preds[route], end2end[route]), [route] * img.shape[0]
        else:
            dets = self._nms(preds["edge"], end2end["edge"])
            routes = ["edge"] * img.shape[0]
            for route, mask in (("adapted", preds["offload"]), (EXTENSION, preds["stop_extension"])):
                chosen = torch.nonzero(mask).flatten().tolist()
                if chosen:
                    for i, det in zip(chosen, self._nms(preds[route], end2end[route])):
                        dets[i], routes[i] = det, route
        results = self.construct_results(dets, img, orig_imgs)
        for r, route in zip(results, routes):
            r.route = route
        return results
