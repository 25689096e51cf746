"""training.train with every read of model weights from storage logged (test_read_once.py).

Per rank, ``$READ_LOG.<rank>`` lists the weight files read and ``$READ_LOG.<rank>.sums`` the sums
of the UNet's, VAE's and image encoder's weights at the start of training."""

from __future__ import annotations

import json
import os
import sys

import pytorch_lightning as pl

from models import bundle, layout
from training import train

LOG, RANK = os.environ["READ_LOG"], os.environ.get("RANK", "0")


def counted(function, name: str):
    def wrapper(*args, **kwargs):
        with open(f"{LOG}.{RANK}", "a") as stream:
            stream.write(f"{name} {args[0] if args else ''}\n")
        return function(*args, **kwargs)

    return wrapper


layout.read_weights = counted(layout.read_weights, "read_weights")
layout.read_open_clip_visual = counted(layout.read_open_clip_visual, "read_open_clip_visual")
bundle.load_file = counted(bundle.load_file, "load_file")
bundle.load_pretrained_weights = counted(bundle.load_pretrained_weights, "pretrained")


class Sums(pl.Callback):
    def on_fit_start(self, trainer, module) -> None:
        parts = {
            "unet": module.unet,
            "vae": module.frozen.vae,
            "image_encoder": module.frozen.image_encoder,
        }
        sums = {
            name: float(sum(p.double().sum() for p in part.state_dict().values()))
            for name, part in parts.items()
        }
        with open(f"{LOG}.{RANK}.sums", "w") as stream:
            json.dump(sums, stream)


build_trainer = train.build_trainer


def with_sums(*args, **kwargs):
    trainer = build_trainer(*args, **kwargs)
    trainer.callbacks.append(Sums())
    return trainer


train.build_trainer = with_sums

if __name__ == "__main__":
    train.main(sys.argv[1:])
