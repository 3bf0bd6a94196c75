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


def build(model: str) -> FastAPI:
    fill = pipeline("fill-mask", model=model, tokenizer=model)
    extract = pipeline("feature-extraction", model=model, tokenizer=model)
    app = FastAPI()

    @app.post("/v1/fill-mask")
    def fill_mask(body: Texts) -> dict:
        return {"results": [fill(text, top_k=body.top_k) for text in body.texts]}

    @app.post("/v1/embeddings")
    def embeddings(body: Texts) -> dict:
        vectors = []
        for text in body.texts:
            hidden = torch.tensor(extract(text)[0])  # (T, D)
            vectors.append(torch.nn.functional.normalize(hidden.mean(0), dim=-1).tolist())
        return {"embeddings": vectors}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")
