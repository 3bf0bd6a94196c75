"""The baseline a user would write: a FastAPI route that calls a transformers pipeline per request.

    python bench/naive_server.py --model DIR --port 8200

Used by bench/infer.py as the reference for the service's inference speed (same model, same machine).
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class Texts(BaseModel):
    texts: list[str]
    top_k: int = 5


def build(model: str, probe: str | None = None) -> FastAPI:
    fill = pipeline("fill-mask", model=model, tokenizer=model)
    extract = pipeline("feature-extraction", model=model, tokenizer=model)
    app = FastAPI()

    def embed(text: str) -> torch.Tensor:
        hidden = torch.tensor(extract(text)[0])  # (T, D)
        return torch.nn.functional.normalize(hidden.mean(0), dim=-1)

    @app.post("/v1/fill-mask")
    def fill_mask(body: Texts) -> dict:
        return {"results": [fill(text, top_k=body.top_k) for text in body.texts]}

    @app.post("/v1/embeddings")
    def embeddings(body: Texts) -> dict:
        return {"embeddings": [embed(text).tolist() for text in body.texts]}

    if probe is not None:  # the same probe head the service fitted, applied per request
        from das_engine.endtask import ProbeHead

        head = ProbeHead.load(probe)

        @app.post("/v1/tasks/{name}/predict")
        def predict(name: str, body: Texts) -> dict:
            results = []
            for text in body.texts:
                with torch.no_grad():
                    scores = head(embed(text)[None]).softmax(-1)[0].tolist()
                labels = head.label_names
                results.append({"label": labels[max(range(len(scores)), key=scores.__getitem__)],
                                "scores": dict(zip(labels, scores, strict=True))})
            return {"results": results}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--probe", default=None, help="a probe task model folder: serve /v1/tasks/NAME/predict")
    args = parser.parse_args()
    uvicorn.run(build(args.model, args.probe), host="127.0.0.1", port=args.port, log_level="warning")
