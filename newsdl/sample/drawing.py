"""Procedural news photos: each topic has a scene; a caption says what was drawn and where."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from newsdl.sample.vocab import RGB, TOPICS

COUNT_WORDS = ("one", "two", "three", "four", "five")
SCENE_PHRASES = {
    "podium": "at a rally", "chart": "on a trading screen", "field": "on the pitch",
    "screen": "at a launch event", "cross": "outside a hospital", "sky": "in the night sky",
    "stage": "on stage", "clouds": "over the coast", "lights": "at the scene", "smoke": "near the front line",
}
_BACKGROUND = {
    "podium": (200, 200, 210), "chart": (245, 245, 245), "field": (50, 140, 60), "screen": (30, 30, 40),
    "cross": (240, 240, 240), "sky": (10, 10, 40), "stage": (40, 10, 30), "clouds": (120, 170, 230),
    "lights": (15, 15, 25), "smoke": (150, 120, 90),
}


def _shape(draw: ImageDraw.ImageDraw, scene: str, box: tuple[int, int, int, int], fill, rng) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if scene in ("field", "lights", "sky"):
        draw.ellipse(box, fill=fill)
    elif scene == "cross":
        w = (x1 - x0) / 3
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=fill)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=fill)
    elif scene == "chart":
        draw.rectangle((x0, y0 + rng.integers(0, max(1, (y1 - y0) // 2)), x1, y1), fill=fill)
    elif scene == "stage":
        draw.polygon([(cx, y0), (x0, y1), (x1, y1)], fill=fill)
    elif scene in ("clouds", "smoke"):
        for _ in range(3):
            dx, dy = rng.integers(-8, 9, size=2)
            draw.ellipse((x0 + dx, y0 + dy, x1 + dx, y1 + dy), fill=fill)
    elif scene == "screen":
        draw.rounded_rectangle(box, radius=6, fill=fill, outline=(220, 220, 220))
    else:  # podium: a block with a flag above it
        draw.rectangle((x0, cy, x1, y1), fill=fill)
        draw.rectangle((cx, y0, cx + 2, cy), fill=(60, 60, 60))
        draw.rectangle((cx + 2, y0, x1, y0 + (cy - y0) / 2), fill=fill)


def draw_scene(topic: str, colour: str, count: int, rng: np.random.Generator,
               size: tuple[int, int]) -> Image.Image:
    scene = TOPICS[topic]["scene"]
    width, height = size
    base = np.array(_BACKGROUND[scene], dtype=np.float32)
    gradient = np.linspace(0.75, 1.15, height, dtype=np.float32)[:, None, None]
    noise = rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(base[None, None, :] * gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    if scene == "field":
        draw.line((width / 2, 0, width / 2, height), fill=(230, 230, 230), width=2)
    fill = tuple(int(c) for c in np.clip(np.array(RGB[colour]) + rng.integers(-20, 21, 3), 0, 255))
    slot = width / count
    for k in range(count):
        side = int(min(slot * 0.8, height * 0.5) * rng.uniform(0.7, 1.0))
        x0 = int(k * slot + rng.uniform(0, max(1.0, slot - side)))
        y0 = int(rng.uniform(height * 0.15, max(height * 0.15 + 1, height - side - 4)))
        _shape(draw, scene, (x0, y0, x0 + side, y0 + side), fill, rng)
    if scene in ("smoke", "clouds"):
        image = image.filter(ImageFilter.GaussianBlur(1.5))
    return image


def caption_for(topic: str, colour: str, count: int, place: str, rng: np.random.Generator) -> str:
    objects = TOPICS[topic]["objects"][int(rng.integers(len(TOPICS[topic]["objects"])))]
    if count == 1:
        objects = {"clouds of smoke": "cloud of smoke"}.get(objects, objects.rstrip("s"))
    phrase = SCENE_PHRASES[TOPICS[topic]["scene"]]
    caption = f"{COUNT_WORDS[count - 1]} {colour} {objects} {phrase} in {place}"
    return caption[0].upper() + caption[1:]
