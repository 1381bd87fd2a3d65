"""ECCPredictor: Ultralytics' detection predictor answering through one route, or letting the gate choose.

`route=edge|cloud|adapted` (or `extension` on a multi-exit edge) runs that route for every image. `route=auto` runs
the edge and the gate on every image and the adapted route only on the images the offload decision sends to the
cloud, by the model's deployment settings (`ecc_yolo.deploy`: its router and calibrated threshold, unless
`router=`/`gate_threshold=`/`margin=` are given): ECC_D sends a frame to the adapted route, ECC_I to the full cloud,
ECC_D+ to either; on a multi-exit edge the router picks the main exit, the extension exit or the cloud, and a frame
stopped at the main exit runs nothing else. Each Results object records the route that answered it in
`.route` (edge, extension, adapted or cloud). This is the in-process simulation of ECC_D; the networked
version (device and cloud in different processes) is `ecc-yolo detect` against `ecc-yolo serve`.
"""

from __future__ import annotations

from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.utils import DEFAULT_CFG, nms, ops

from ecc_yolo.args import all_defaults, check_ecc_values, check_keys, default_project
from ecc_yolo.deploy import resolve
from ecc_yolo.infer import nms_settings, route_end2end
from ecc_yolo.nn.ecc_model import find_ecc
from ecc_yolo.routes import ADAPTED, AUTO, CLOUD, EDGE, EXTENSION


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
        if route != AUTO:
            ecc.set_route(route)
            return {"route": route, route: super().inference(im, *args, **kwargs)}
        edge_out, feats = ecc.edge_forward(im, keep=ecc.device_layers)
        settings = resolve(ecc, self.args)
        router = ecc.exit_logits(feats, edge_out).float().cpu().numpy() if ecc.router is not None else None
        decision = settings.decide(ecc.gate_scores(feats, edge_out).float().cpu().numpy(), router)
        masks = {r: torch.from_numpy(decision.answered_by(r)).to(im.device) for r in (ADAPTED, CLOUD, EXTENSION)}
        out = {"route": route, EDGE: edge_out, "masks": masks}
        if masks[ADAPTED].any():
            out[ADAPTED] = ecc.adapted_tail(ecc.adapt({k: v[masks[ADAPTED]] for k, v in feats.items()}))
        if masks[CLOUD].any():
            out[CLOUD] = ecc.cloud_forward(im[masks[CLOUD]])
        if masks[EXTENSION].any():
            out[EXTENSION] = ecc.extension_forward({k: v[masks[EXTENSION]] for k, v in feats.items()})
        return out

    def _nms(self, output: Any, end2end: bool) -> list[torch.Tensor]:
        a = self.args
        return nms.non_max_suppression(output, **nms_settings(a.conf, a.iou, a.max_det, a.classes, a.agnostic_nms),
                                       end2end=end2end)

    def postprocess(self, preds: dict[str, Any], img: torch.Tensor, orig_imgs: Any, **kwargs):
        """NMS per route with that route's head settings; Results carry `.route`."""
        ecc = find_ecc(self.model)
        end2end = route_end2end(ecc)
        if not isinstance(orig_imgs, list):
            orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
        if preds["route"] != AUTO:
            route = preds["route"]
            dets, routes = self._nms(preds[route], end2end[route]), [route] * img.shape[0]
        else:
            dets = self._nms(preds[EDGE], end2end[EDGE])
            routes = [EDGE] * img.shape[0]
            for route, mask in preds["masks"].items():
                chosen = torch.nonzero(mask).flatten().tolist()
                if chosen:
                    for i, det in zip(chosen, self._nms(preds[route], end2end[route])):
                        dets[i], routes[i] = det, route
        results = self.construct_results(dets, img, orig_imgs)
        for r, route in zip(results, routes):
            r.route = route
        return results
